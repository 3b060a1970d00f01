"""SentimentAnalysis: positive, neutral or negative with a score in -1..1, per
turn, and a conversation trend over the turns.

A lexicon scorer over folded words (``text.words.fold``), in English, Spanish,
French, German and Portuguese at once (the lexicons are merged; the few words
that mean different things in two languages are handled where they meet).
Every sentiment word has a weight from -3 to 3 and is adjusted by what is
around it:

================  ============================================================
negation          a negator ("not", "no", "pas", "nicht", "não", "never", "n't")
                  turns the next three words: a positive word becomes
                  ``-0.75 x`` its weight ("not happy"), a negative one
                  ``-0.5 x`` ("not bad" is mildly positive). German and
                  spoken French also negate after the verb ("gefällt mir
                  nicht", "j'aime pas"). "never again", "nunca más", "plus
                  jamais", "nie wieder" are strongly negative phrases.
intensifiers      "very", "extremely", "muy", "très", "sehr", "muito" ...
                  multiply the next sentiment word within two words (1.2-1.8);
                  diminishers ("slightly", "a bit", "un poco", "un peu",
                  "etwas") multiply it by 0.5-0.8.
contrast          after "but", "however", "pero", "mais", "aber", "mas" ...
                  words weigh 1.5 x, before it 0.5 x; a concessive clause
                  ("although", "aunque", "obwohl", "bien que", "embora") weighs
                  0.5 x up to the next punctuation.
emphasis          a word in CAPITALS weighs 1.5 x (a message all in capitals:
                  every word 1.3 x); each "!" adds 15% to the total (up to 3).
emoji             emoji and emoticons ( :) :( <3 ) carry their own weights.
sarcasm           praise that opens a sentence and is followed by a pause and
                  a complaint ("Great, another delay", "Perfect... my order is
                  late again"), "love" + waiting ("I love waiting on hold"), a
                  trailing "... not", an eye-roll emoji with praise, and set
                  phrases ("yeah right", "thanks for nothing", "na toll",
                  "merci pour rien") count the praise as negative.
mixed             when both polarities are present the reasons name both, and
                  unless one side is at least twice the other the label is
                  neutral (the score keeps its small lean).
================  ============================================================

The total ``S`` becomes ``score = tanh(S / 2.5)``: one plain "good" (2) is
about 0.66, "ok" (0.5) about 0.2. Labels: ``score >= 0.2`` positive,
``score <= -0.2`` negative, otherwise neutral. ``reasons`` say what counted:
"negated: not happy", "intensifier: very", "sarcasm: great + delay", ...

:func:`sentiment_trend` is an exponentially weighted average of the turn
scores, the latest weighing most (each earlier turn weighs ``TREND_DECAY`` =
0.6 times the next). Pure Python, a few dozen microseconds per message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from fenlo_server.pipeline.analysis.types import Sentiment, SentimentLabel
from fenlo_server.text.words import fold

POSITIVE_AT = 0.2  # score >= this is "positive"
NEGATIVE_AT = -0.2  # score <= this is "negative"
SCALE = 2.5  # score = tanh(total / SCALE)
TREND_DECAY = 0.6  # in the trend, each earlier turn weighs this times the next one

NEGATED_POSITIVE = -0.75  # "not happy" = -0.75 x happy
NEGATED_NEGATIVE = -0.5  # "not bad" = -0.5 x bad
NEGATION_SCOPE = 3  # words after a negator
INTENSIFIER_SCOPE = 2  # words after an intensifier
BEFORE_CONTRAST = 0.5
AFTER_CONTRAST = 1.5
CONCESSIVE = 0.5
CAPS = 1.5
ALL_CAPS = 1.3
EXCLAMATION = 0.15  # per "!", up to MAX_EXCLAMATIONS
MAX_EXCLAMATIONS = 3
DOMINANCE = 2.0  # in a mixed message, one side must be this times the other to label it
SARCASM_WINDOW = 12  # tokens after an opening praise where the complaint may be
MAX_REASONS = 10


def _words(spec: str) -> dict[str, float]:
    """``"2: good great | -1: slow"`` -> {"good": 2.0, "great": 2.0, "slow": -1.0}."""
    table: dict[str, float] = {}
    for group in spec.split("|"):
        weight, _, words = group.partition(":")
        for word in words.split():
            table[word] = float(weight)
    return table


# Lexicons: folded words (lower-case, no accents, ß as ss).
_EN = """
3: excellent amazing awesome fantastic outstanding superb wonderful brilliant perfect love loved
   loves adore adored delighted thrilled exceptional phenomenal incredible best terrific fabulous
   marvellous marvelous flawless |
2: good great happy glad pleased nice lovely helpful friendly satisfied recommend recommended
   enjoy enjoyed like liked likes beautiful impressed impressive fast quick smooth efficient
   professional kind polite reliable easy comfortable clean tasty delicious fun cool appreciate
   appreciated grateful gorgeous pleasant super welcoming attentive |
1.5: thanks thank |
1: decent fair reasonable solid better improved works worked resolved fixed sorted quickly
   affordable cheers |
0.5: ok okay fine alright |
-1: slow late delay delays delayed expensive pricey problem problems issue issues confusing
    confused meh boring mediocre difficult error errors bug bugs missing unfortunately worried
    tired damn |
-1.5: wrong overpriced cold lost |
-2: bad poor unhappy disappointed disappointing disappointment annoyed annoying frustrated
    frustrating upset sad angry broken rude unfriendly unhelpful useless waste worse fail failed
    failure sucks sucked dirty complaint complain unreliable buggy crashed crash crashes nightmare
    mess messed ignored regret dissatisfied lousy crap wtf careless incompetent |
-3: terrible awful horrible horrendous worst hate hated disgusting furious outraged unacceptable
    ridiculous pathetic scam appalling atrocious livid disgraceful dreadful shit fuck
"""
_ES = """
3: excelente excelentes increible increibles maravilloso maravillosa perfecto perfecta encanta
   encanto encantado encantada fantastico fantastica estupendo estupenda genial geniales
   espectacular |
2: bueno buena buenos buenas bien contento contenta contentos contentas feliz felices satisfecho
   satisfecha amable amables rapido rapida agradable recomiendo recomendable gusta gusto guay
   lindo linda bonito bonita limpio limpia rico rica facil profesional atento atenta mejor |
1.5: gracias |
1: correcto aceptable decente |
0.5: vale |
-1: lento lenta caro caros problema problemas retraso error confuso |
-2: malo mala malos malas triste enfadado enfadada molesto molesta decepcionado decepcionada
    decepcion frustrado frustrada roto rota sucio sucia grosero grosera maleducado inutil peor
    fatal queja lamentable desastre harto harta |
-3: horrible horribles terrible terribles pesimo pesima odio asqueroso vergonzoso verguenza
    inaceptable estafa indignado indignada mierda
"""
_FR = """
3: excellent excellente excellents parfait parfaite geniale merveilleux merveilleuse formidable
   fantastique incroyable adore adorable extraordinaire superbe magnifique |
2: bon bonne bons bonnes content contente contents heureux heureuse satisfait satisfaite
   satisfaits aimable agreable sympa gentil gentille rapide efficace recommande top ravi ravie
   plaisir propre delicieux delicieuse facile professionnel aime |
1.5: merci |
1: correct correcte mieux raisonnable |
-1: lent lente cher chere chers probleme problemes retard erreur complique |
-2: mauvais mauvaise mauvaises decu decue decevant decevante enerve enervee fache fachee mecontent
    mecontente casse cassee sale impoli inutile pire nul nulle dommage plainte insatisfait agace |
-3: affreux affreuse deteste honteux honteuse inadmissible inacceptable arnaque catastrophique
    degoutant scandaleux merde
"""
_DE = """
3: ausgezeichnet hervorragend perfekt wunderbar fantastisch grossartig genial traumhaft
   begeistert liebe exzellent spitze |
2: gut gute guter gutes guten toll tolle toller zufrieden freundlich freundliche hilfreich nett
   schnell froh glucklich empfehlen empfehle lecker sauber prima klasse angenehm gefallt gefallen
   mag |
1.5: danke |
1: ordentlich besser |
0.5: passt |
-1: langsam teuer probleme verspatung verspatet fehler leider umstandlich |
-2: schlecht schlechte schlechter schlechten enttauscht enttauschend unzufrieden traurig argerlich
    verargert sauer kaputt defekt unfreundlich schmutzig nutzlos schlimm schlimmer frustriert
    frustrierend unhoflich beschwerde |
-3: schrecklich furchtbar katastrophal katastrophe miserabel unverschamt inakzeptabel hasse
    betrug wutend ekelhaft grauenhaft scheisse zeitverschwendung
"""
_PT = """
3: otimo otima perfeito perfeita maravilhoso maravilhosa incrivel fantastico adorei amei adoro
   amo sensacional |
2: bom boa bons boas bem contente satisfeito satisfeita gentil gentis agradavel recomendo gostei
   legal bacana limpo limpa delicioso deliciosa atencioso atenciosa |
1.5: obrigado obrigada |
1: razoavel tranquilo |
0.5: certo beleza |
-1: atraso atrasado erro demora demorou |
-2: ruim ruins chateado chateada irritado irritada quebrado quebrada sujo suja grosseiro
    grosseira pior reclamacao defeito |
-3: horrivel horriveis terrivel pessimo pessima odeio odiei nojento vergonha inaceitavel absurdo
    golpe merda
"""
LEXICON: dict[str, float] = {}
for _spec in (_EN, _ES, _FR, _DE, _PT):
    LEXICON.update(_words(_spec))
LEXICON["mal"] = -2.0  # es/pt/fr "bad(ly)"; not the German particle (see _GERMAN)

NEGATORS = frozenset(
    """not no never cannot nobody nothing none neither nor without nunca jamas ni tampoco nadie
    poco ne pas jamais rien aucun aucune sans nicht kein keine keinen keiner keinem nie niemals
    nichts ohne nao nem nenhum nenhuma sem pouco""".split()
)
POST_NEGATORS = frozenset(("nicht", "nie"))  # "Es gefällt mir nicht."
_FRENCH_VERBS = frozenset(("aime", "adore", "plait", "kiffe"))  # "j'aime pas"

INTENSIFIERS: dict[str, float] = {
    **dict.fromkeys(("very", "really", "so", "truly", "seriously", "such", "highly"), 1.5),
    **dict.fromkeys(("extremely", "incredibly", "utterly", "insanely", "fucking"), 1.8),
    **dict.fromkeys(("totally", "absolutely", "completely", "super", "especially"), 1.5),
    **dict.fromkeys(("too", "quite", "pretty"), 1.2),
    **dict.fromkeys(("muy", "tan", "realmente", "totalmente", "demasiado", "mucho"), 1.5),
    **dict.fromkeys(("muchisimo", "extremadamente", "sumamente"), 1.8),
    **dict.fromkeys(("tres", "vraiment", "tellement", "totalement", "vachement", "hyper"), 1.5),
    **dict.fromkeys(("trop", "completement", "bastante", "ziemlich"), 1.3),
    **dict.fromkeys(("extremement", "extrem", "unglaublich", "muitissimo", "extremamente"), 1.8),
    **dict.fromkeys(("sehr", "wirklich", "total", "echt", "absolut", "voll", "richtig"), 1.5),
    **dict.fromkeys(("muito", "muita", "tao"), 1.5),
    # diminishers
    **dict.fromkeys(("slightly", "somewhat", "ligeramente", "legerement", "ligeiramente"), 0.5),
    **dict.fromkeys(("kinda", "fairly", "rather", "plutot", "etwas", "meio", "algo"), 0.7),
}
CONTRASTS = frozenset(
    """but however nevertheless pero mais cependant pourtant toutefois neanmoins aber jedoch
    allerdings trotzdem mas porem contudo entretanto todavia""".split()
)
CONCESSIVES = frozenset("although aunque obwohl quoique embora".split())
# A complaint after opening praise makes the praise sarcastic.
CONTEXT = frozenset(
    """delay delays delayed late again another waiting wait waited queue ignored cancelled
    canceled broken crashed crash outage error bug charged fee fees retraso retrasado espera
    esperando esperar cancelado cancelada roto rota caido cobrado retard encore attente attendre
    annule annulee panne plante erreur verspatung verspatet wieder warten warteschleife storniert
    abgesagt fehler absturz atraso atrasado atrasou cancelado quebrado erro caiu cancelling
    canceling ignoring wasting
    novamente""".split()
)
_REPEATS = frozenset(  # generic cues; a named complaint ("delay") makes a better reason
    "again|another|encore|wieder|novamente|yet another|otra vez|de nuevo|schon wieder|de novo|"
    "outra vez|mais uma vez".split("|")
)
_FRIENDLY_AGAIN = frozenset(("you", "see", "come", "visit", "back", "thanks", "merci", "danke"))
SARCASM_PRONE = frozenset(
    """great wonderful fantastic perfect brilliant lovely awesome amazing nice super excellent
    terrific fabulous marvellous marvelous genial estupendo perfecto maravilloso fantastico
    excelente parfait formidable magnifique bravo toll prima klasse wunderbar perfekt fantastisch
    otimo otima perfeito maravilhoso""".split()
)
SARCASTIC_VERBS = frozenset("love loving adore enjoy encanta adoro liebe amo adorei".split())
_WOULD = frozenset(("would", "should", "could"))
_LIKE_VERBS = frozenset(("like", "love", "enjoy"))
_AFTER_LIKE = frozenset(("looks", "look", "looked", "seems", "feel", "feels", "just", "more"))
INTERJECTIONS = frozenset(
    "oh just yeah wow ah well so how what really vaya ay ach na nossa ai quel quelle".split()
)
_GERMAN = frozenset("ich nicht und das ist bitte sie wir mir noch schon doch ein eine".split())
_PORTUGUESE = frozenset("nao voce muito obrigado obrigada uma meu minha isso foi ja tambem".split())
_FRENCH = frozenset("je tu il nous vous est les des une pas tres avec c".split())

# Phrases: (words after the first, kind, value). Kinds: "score" (a sentiment weight),
# "sarcasm" (a sarcastic set phrase, negative), "neutral" (greetings: consumed, no
# weight), "modifier" (intensity multiplier), "context" (a complaint cue for sarcasm),
# "concessive" and "contrast".
_PHRASE_LIST: list[tuple[str, str, float]] = [
    ("never again", "score", -2.5),
    ("nunca mas", "score", -2.5),
    ("plus jamais", "score", -2.5),
    ("nie wieder", "score", -2.5),
    ("nunca mais", "score", -2.5),
    ("waste of time", "score", -2.5),
    ("waste of money", "score", -2.5),
    ("rip off", "score", -2.5),
    ("fed up", "score", -2.0),
    ("let down", "score", -2.0),
    ("over the moon", "score", 3.0),
    ("well done", "score", 2.0),
    ("could be better", "score", -1.5),
    ("no problem", "score", 0.5),
    ("no worries", "score", 0.5),
    ("perdida de tiempo", "score", -2.5),
    ("perte de temps", "score", -2.5),
    ("ne importe quoi", "score", -2.0),
    ("perda de tempo", "score", -2.5),
    ("yeah right", "sarcasm", -1.5),
    ("yeah sure", "sarcasm", -1.0),
    ("thanks for nothing", "sarcasm", -2.5),
    ("thanks a lot for nothing", "sarcasm", -2.5),
    ("just what i needed", "praise", 2.0),
    ("gracias por nada", "sarcasm", -2.5),
    ("merci pour rien", "sarcasm", -2.5),
    ("danke fur nichts", "sarcasm", -2.5),
    ("na toll", "sarcasm", -2.0),
    ("na super", "sarcasm", -2.0),
    ("obrigado por nada", "sarcasm", -2.5),
    ("obrigada por nada", "sarcasm", -2.5),
    ("good morning", "neutral", 0.0),
    ("good afternoon", "neutral", 0.0),
    ("good evening", "neutral", 0.0),
    ("good night", "neutral", 0.0),
    ("buenos dias", "neutral", 0.0),
    ("buenas tardes", "neutral", 0.0),
    ("buenas noches", "neutral", 0.0),
    ("de nada", "neutral", 0.0),
    ("bonne journee", "neutral", 0.0),
    ("bonne soiree", "neutral", 0.0),
    ("bonne nuit", "neutral", 0.0),
    ("guten morgen", "neutral", 0.0),
    ("guten tag", "neutral", 0.0),
    ("guten abend", "neutral", 0.0),
    ("schonen tag", "neutral", 0.0),
    ("bom dia", "neutral", 0.0),
    ("boa tarde", "neutral", 0.0),
    ("boa noite", "neutral", 0.0),
    ("tudo bem", "neutral", 0.0),
    ("a bit", "modifier", 0.6),
    ("a little", "modifier", 0.6),
    ("a little bit", "modifier", 0.6),
    ("kind of", "modifier", 0.6),
    ("sort of", "modifier", 0.6),
    ("un poco", "modifier", 0.6),
    ("un peu", "modifier", 0.6),
    ("ein bisschen", "modifier", 0.6),
    ("ein wenig", "modifier", 0.6),
    ("um pouco", "modifier", 0.6),
    ("on hold", "context", 0.0),
    ("otra vez", "context", 0.0),
    ("de nuevo", "context", 0.0),
    ("schon wieder", "context", 0.0),
    ("de novo", "context", 0.0),
    ("outra vez", "context", 0.0),
    ("mais uma vez", "context", 0.0),
    ("yet another", "context", 0.0),
    ("even though", "concessive", 0.0),
    ("si bien", "concessive", 0.0),
    ("a pesar de", "concessive", 0.0),
    ("bien que", "concessive", 0.0),
    ("sin embargo", "contrast", 0.0),
    ("no obstante", "contrast", 0.0),
]
PHRASES: dict[str, list[tuple[tuple[str, ...], str, float]]] = {}
for _text, _kind, _value in _PHRASE_LIST:
    _first, *_rest = _text.split()
    PHRASES.setdefault(_first, []).append((tuple(_rest), _kind, _value))
for _options in PHRASES.values():
    _options.sort(key=lambda option: -len(option[0]))  # longest first

EMOJI: dict[str, float] = {
    **dict.fromkeys("😀😃😄😁😆😊🙂😍🥰😘👍👏🙌❤💕💖💯🎉✨🌟⭐😎🤩😋👌💪", 2.0),
    **dict.fromkeys("🙏😂🤣😅✅😉", 1.0),
    **dict.fromkeys("😡😠🤬😭😫😩👎💔🤮🤢", -2.5),
    **dict.fromkeys("😞😔😟😢😤🙁☹😒🙄😕😣😖❌😱😑🙃", -1.5),
    **dict.fromkeys((":)", ":-)", ":D", ":-D", ";)", ";-)", "=)", "<3", ":P", ":p"), 1.5),
    **dict.fromkeys((":(", ":-(", ":'(", ">:(", ":/", ":-/", ":\\", "=("), -1.5),
}
EYE_ROLLS = frozenset("🙄🙃")

_WORD, _EMOJI, _PUNCT = 0, 1, 2
_TOKEN = re.compile(
    r"(?P<emo>(?<![\w/:])(?:>:\(|:'\(|[:;=]-?[()DPp/\\]|<3)(?![\w/]))"
    r"|(?P<emoji>[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50])"
    r"|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)*)"
    r"|(?P<punct>\.{2,}|…|[!?]+|[.,;:])"
)
_BOUNDARY_END = frozenset((".", "?", "…"))  # end a sentence (so do "!..." and "...")
_ELIDED = frozenset(("l", "d", "j", "n", "qu", "c", "s", "m", "t", "jusqu", "lorsqu", "puisqu"))
_CONTRACTIONS = {"m": "am", "re": "are", "s": "is", "ll": "will", "ve": "have", "d": "would"}

Token = tuple[int, str, str]  # kind, folded, as written


def _fold_word(raw: str) -> str:
    if raw.isascii():
        return raw.lower()
    return fold(raw).replace("ß", "ss")


def _tokens(text: str) -> list[Token]:
    tokens: list[Token] = []
    for match in _TOKEN.finditer(text.replace("’", "'").replace("`", "'")):
        kind = match.lastgroup
        raw = match.group()
        if kind == "word":
            word = _fold_word(raw)
            if "'" not in word:
                tokens.append((_WORD, word, raw))
                continue
            head, _, tail = word.partition("'")
            if word.endswith("n't"):  # don't, isn't, can't, won't
                tokens.append((_WORD, word[:-3] or "do", raw))
                tokens.append((_WORD, "not", raw))
            elif head in _ELIDED and tail not in _CONTRACTIONS:  # l'accueil, n'est
                tokens.append((_WORD, "ne" if head == "n" else head, raw))
                tokens.append((_WORD, tail, raw[len(head) + 1 :]))
            else:  # it's, I'm, I'd
                tokens.append((_WORD, head, raw))
                tokens.append((_WORD, _CONTRACTIONS.get(tail, tail), raw))
        elif kind == "punct":
            tokens.append((_PUNCT, raw, raw))
        else:
            tokens.append((_EMOJI, raw, raw))
    return tokens


class _Hit:
    """One sentiment-bearing token or phrase and its adjusted weight."""

    __slots__ = ("index", "negated", "prone", "reason", "start", "text", "weight")

    def __init__(self, weight: float, text: str, index: int, *, start: bool, prone: bool) -> None:
        self.weight = weight
        self.text = text
        self.index = index  # token position
        self.start = start  # the first content word of its sentence
        self.prone = prone  # praise that sarcasm often borrows ("great", "perfect")
        self.negated = False
        self.reason = ""  # what reasons say of it ("positive: great"), replaced on sarcasm


def _phrase(tokens: list[Token], i: int) -> tuple[int, str, float, str] | None:
    """The longest phrase starting at ``i``: (length, kind, value, text)."""
    options = PHRASES.get(tokens[i][1])
    if options is None:
        return None
    for rest, kind, value in options:
        end = i + 1 + len(rest)
        if end <= len(tokens) and all(
            tokens[i + 1 + k][0] == _WORD and tokens[i + 1 + k][1] == word
            for k, word in enumerate(rest)
        ):
            return len(rest) + 1, kind, value, " ".join((tokens[i][1], *rest))
    return None


def _clause_ends_after(tokens: list[Token], i: int, within: int) -> int | None:
    """The position of a post-negator among the next ``within`` words when it ends the clause."""
    for j in range(i + 1, min(len(tokens), i + 1 + within)):
        kind, word, _ = tokens[j]
        if kind != _WORD:
            return None
        if word in POST_NEGATORS and (j + 1 == len(tokens) or tokens[j + 1][0] != _WORD):
            return j
    return None


def analyze_sentiment(text: str) -> Sentiment:
    """The sentiment of one message: label, score in -1..1 and the reasons."""
    tokens = _tokens(text)
    if not tokens:
        return Sentiment("neutral", 0.0)
    words = {t[1] for t in tokens if t[0] == _WORD}
    german = not words.isdisjoint(_GERMAN)
    portuguese = len(words & _PORTUGUESE) > len(words & _FRENCH)
    upper = [t[2] for t in tokens if t[0] == _WORD and len(t[2]) >= 2]
    all_caps = len(upper) >= 2 and all(w.isupper() for w in upper)

    reasons: list[str] = []
    hits: list[_Hit] = []
    context: list[tuple[int, str]] = []  # complaint cues: position, word
    contrast_at = -1  # len(hits) at the last contrast word
    contrast_token = -1
    negate_left = 0
    negator = ""
    boost = 1.0
    boost_left = 0
    booster = ""
    concessive = False
    content_seen = False  # a content word already opened this sentence
    exclamations = 0
    eye_roll = ""
    trailing_not = False
    sarcasm_cue = ""

    i = 0
    n = len(tokens)
    while i < n:
        kind, word, raw = tokens[i]
        if kind == _PUNCT:
            exclamations += word.count("!")
            negate_left = boost_left = 0
            concessive = False
            if word in _BOUNDARY_END or word[0] in "!?" or word.startswith(".."):
                content_seen = False
            i += 1
            continue
        if kind == _EMOJI:
            weight = EMOJI.get(word, 0.0)
            if word in EYE_ROLLS:
                eye_roll = word
            if weight:
                hits.append(_Hit(weight, word, i, start=False, prone=False))
                reasons.append(f"emoji: {word}")
            i += 1
            continue

        phrase = _phrase(tokens, i)
        if phrase is not None:
            length, phrase_kind, value, phrase_text = phrase
            if phrase_kind in ("score", "praise", "sarcasm"):
                weight = value * (CONCESSIVE if concessive else 1.0)
                end = i + length - 1
                hit = _Hit(
                    weight, phrase_text, end, start=not content_seen, prone=phrase_kind == "praise"
                )
                if phrase_kind == "sarcasm":
                    sarcasm_cue = phrase_text
                    hit.reason = f"sarcasm cue: {phrase_text}"
                else:
                    hit.reason = f"{'positive' if value > 0 else 'negative'}: {phrase_text}"
                reasons.append(hit.reason)
                hits.append(hit)
            elif phrase_kind == "modifier":
                boost, boost_left, booster = value, INTENSIFIER_SCOPE, phrase_text
            elif phrase_kind == "context":
                context.append((i, phrase_text))
            elif phrase_kind == "concessive":
                concessive = True
            elif phrase_kind == "contrast":
                contrast_at, contrast_token = len(hits), i
                reasons.append(f"contrast: {phrase_text}")
                negate_left = 0
            content_seen = True
            i += length
            continue

        if word in NEGATORS:
            if (
                word == "not"
                and i > 0
                and tokens[i - 1][0] == _PUNCT
                and _only_marks_after(tokens, i)
            ):
                trailing_not = True  # "Oh wonderful... not"
            negate_left, negator = NEGATION_SCOPE, raw.lower() if word != "ne" else "ne"
            content_seen = True
            i += 1
            continue
        if word in CONTRASTS and not (word == "mais" and portuguese):
            contrast_at, contrast_token = len(hits), i
            reasons.append(f"contrast: {word}")
            negate_left = 0
            concessive = False
            content_seen = True
            i += 1
            continue
        if word in CONCESSIVES:
            concessive = True
            i += 1
            continue
        if word in CONTEXT:
            friendly = i > 0 and tokens[i - 1][1] in _FRIENDLY_AGAIN
            if not friendly:
                context.append((i, word))

        weight = LEXICON.get(word, 0.0) or _inflected(word)
        if word == "mal" and german:
            weight = 0.0
        if weight and word in _LIKE_VERBS:
            before = {tokens[j][1] for j in range(max(0, i - 2), i)}
            if not before.isdisjoint(_WOULD) or not before.isdisjoint(_AFTER_LIKE):
                weight = 0.0  # "I'd like to book", "looks like"
        intensity = INTENSIFIERS.get(word)
        if intensity is not None and (word != "super" or _next_is_sentiment(tokens, i)):
            boost = min(boost * intensity, 2.5) if boost_left else intensity
            boost_left, booster = INTENSIFIER_SCOPE + 1, word
            weight = 0.0
        if weight:
            start = not content_seen
            hit = _Hit(weight, raw, i, start=start, prone=word in SARCASM_PRONE)
            if boost_left:
                hit.weight *= boost
                reasons.append(f"{'intensifier' if boost > 1 else 'diminisher'}: {booster}")
            if len(raw) >= 2 and raw.isupper() and not all_caps:
                hit.weight *= CAPS
                reasons.append(f"caps: {raw}")
            post = None
            if not negate_left:
                post = _clause_ends_after(tokens, i, 3 if german else 0)
                if (
                    post is None
                    and word in _FRENCH_VERBS
                    and i + 1 < n
                    and tokens[i + 1][1] == "pas"
                ):
                    post = i + 1
            if negate_left or post is not None:
                by = negator if negate_left else tokens[post or 0][1]
                hit.weight *= NEGATED_POSITIVE if hit.weight > 0 else NEGATED_NEGATIVE
                hit.negated = True
                hit.reason = f"negated: {by} {raw}" if negate_left else f"negated: {raw} {by}"
            else:
                hit.reason = f"{'positive' if hit.weight > 0 else 'negative'}: {raw}"
            reasons.append(hit.reason)
            if concessive:
                hit.weight *= CONCESSIVE
            if word in SARCASTIC_VERBS and not hit.negated:
                cue = next((w for j, w in context if i < j <= i + 3), None)
                cue = cue or _context_ahead(tokens, i, 3)
                if cue:
                    hit.weight = -abs(hit.weight)
                    hit.negated = True
                    _replace(reasons, hit, f"sarcasm: {word} + {cue}")
            hits.append(hit)
            boost_left = 0
        if word not in INTERJECTIONS:
            content_seen = True
        negate_left = max(0, negate_left - 1)
        boost_left = max(0, boost_left - 1)
        i += 1

    _sarcasm(tokens, hits, context, contrast_token, reasons)
    if trailing_not or eye_roll or sarcasm_cue:
        # "Oh wonderful... not", "Great service 🙄", "Yeah right, like that helps":
        # whatever praise the message holds is not meant.
        cue = "... not" if trailing_not else eye_roll or sarcasm_cue
        for hit in hits:
            if hit.weight > 0:
                _replace(reasons, hit, f"sarcasm: {hit.text.lower()} + {cue}")
                hit.weight = -hit.weight
    if contrast_at >= 0:
        for k, hit in enumerate(hits):
            hit.weight *= BEFORE_CONTRAST if k < contrast_at else AFTER_CONTRAST
    if all_caps and hits:
        reasons.append("all caps")

    positive = sum(h.weight for h in hits if h.weight > 0)
    negative = -sum(h.weight for h in hits if h.weight < 0)
    total = positive - negative
    if exclamations and total:
        total *= 1 + EXCLAMATION * min(exclamations, MAX_EXCLAMATIONS)
        reasons.append("exclamation: " + "!" * min(exclamations, MAX_EXCLAMATIONS))
    if all_caps:
        total *= ALL_CAPS
    score = round(math.tanh(total / SCALE), 3)
    label: SentimentLabel = (
        "positive" if score >= POSITIVE_AT else "negative" if score <= NEGATIVE_AT else "neutral"
    )
    if positive and negative:
        reasons.append(f"mixed: +{positive:.1f} / -{negative:.1f}")
        if max(positive, negative) < DOMINANCE * min(positive, negative):
            label = "neutral"
    return Sentiment(label, score, tuple(dict.fromkeys(reasons))[:MAX_REASONS])


_SUPERLATIVE = re.compile(r"(\w{3,})(isim[oa]s?)$")  # es "buenísimo", "carísima"
_ENDINGS = ("es", "en", "er", "em", "e", "s")  # German adjective endings, plurals


def _inflected(word: str) -> float:
    """The weight of an inflected form whose base is in the lexicon: a Spanish
    superlative counts 1.5 x its base ("malísimo"), "unfreundliches" as
    "unfreundlich"; bases shorter than four letters are not tried ("male")."""
    superlative = _SUPERLATIVE.match(word)
    if superlative is not None:
        base = superlative.group(1)
        weight = LEXICON.get(base + "o", 0.0) or LEXICON.get(base + "e", 0.0)
        return 1.5 * weight
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 4:
            weight = LEXICON.get(word[: -len(ending)], 0.0)
            if weight:
                return weight
    return 0.0


def _only_marks_after(tokens: list[Token], i: int) -> bool:
    return all(t[0] != _WORD for t in tokens[i + 1 :])


def _next_is_sentiment(tokens: list[Token], i: int) -> bool:
    return i + 1 < len(tokens) and tokens[i + 1][1] in LEXICON


def _context_ahead(tokens: list[Token], i: int, within: int) -> str | None:
    for j in range(i + 1, min(len(tokens), i + 1 + within)):
        if tokens[j][0] == _WORD and tokens[j][1] in CONTEXT:
            return tokens[j][1]
    return None


def _sarcasm(
    tokens: list[Token],
    hits: list[_Hit],
    context: list[tuple[int, str]],
    contrast_token: int,
    reasons: list[str],
) -> None:
    """Opening praise, a pause, then a complaint: "Great, another delay." The praise
    turns negative when what follows (within SARCASM_WINDOW tokens, before any
    contrast word) is negative on balance, or holds a complaint cue and no praise."""
    for hit in hits:
        if not (hit.prone and hit.start and hit.weight > 0 and not hit.negated):
            continue
        after = hit.index + 1
        if after >= len(tokens):
            continue
        kind, word, _ = tokens[after]
        if kind != _PUNCT and word not in CONTEXT and word not in ("another", "yet"):
            continue
        end = hit.index + SARCASM_WINDOW
        if hit.index < contrast_token <= end:
            continue
        rest = sum(h.weight for h in hits if hit.index < h.index <= end)
        cues = [w for j, w in context if hit.index < j <= end]
        cue = next((w for w in cues if w not in _REPEATS), cues[0] if cues else None)
        if cue is None:
            cue = next((h.text for h in hits if hit.index < h.index <= end and h.weight < 0), None)
        if rest < 0 or (cue is not None and rest <= 0):
            _replace(reasons, hit, f"sarcasm: {hit.text.lower()} + {cue}")
            hit.weight = -abs(hit.weight)


def _replace(reasons: list[str], hit: _Hit, reason: str) -> None:
    """Say that ``hit`` was sarcastic instead of what it first seemed."""
    if hit.reason in reasons:
        reasons[reasons.index(hit.reason)] = reason
    else:
        reasons.append(reason)
    hit.reason = reason


def sentiment_trend(scores: Sequence[float]) -> float:
    """The conversation's mood, -1..1: scores oldest first, each earlier turn weighing
    TREND_DECAY (0.6) times the next, so the last turn counts 40% of a long
    conversation and the last three about 78%."""
    if not scores:
        return 0.0
    total = 0.0
    norm = 0.0
    weight = 1.0
    for score in reversed(scores):
        total += weight * score
        norm += weight
        weight *= TREND_DECAY
        if weight < 1e-4:
            break
    return max(-1.0, min(1.0, round(total / norm, 3)))
