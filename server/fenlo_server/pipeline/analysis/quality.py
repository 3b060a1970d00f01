"""QualityScorer: how good an answer looks, 0..1, with the parts that made the score.

Five parts, each 0..1, weighted (the weights sum to 1):

=================  ======  ==========================================================
part               weight  what it measures
=================  ======  ==========================================================
length_fit          0.15   not too short for the question, not too long for a chat
citation_use        0.15   cites a passage when passages were retrieved
passage_overlap     0.30   grounding: share of the answer's words found in the passages
question_overlap    0.20   share of the question's words the answer takes up
certainty           0.20   refusals ("I couldn't find ...") and hedges ("probably") lower it
=================  ======  ==========================================================

A part that cannot be measured is left out of ``components`` and the weights of
the others are scaled up to sum to 1 again: without passages there is nothing
to cite or to be grounded in (no penalty), and a question without content words
("Hi!") has nothing to take up. ``score`` is the weighted sum, clamped to 0..1;
``reasons`` explain the parts below ``LOW`` (and note an interrupted answer).

The text an answer spends refusing or deflecting ("I'm sorry, I couldn't find
that. Would you like me to connect you with a person?") answers nothing, so the
two overlap parts only look at the rest of it. Everything is word matching on
folded, lightly stemmed words (``text.words``): deterministic, no model, and well
under a millisecond for a chat-sized answer and a handful of passages.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from fenlo_server.pipeline.analysis.types import Quality, QualityComponent
from fenlo_server.text.words import STOPWORDS, stem

WEIGHTS: dict[str, float] = {
    "length_fit": 0.15,
    "citation_use": 0.15,
    "passage_overlap": 0.30,
    "question_overlap": 0.20,
    "certainty": 0.20,
}
LOW = 0.5  # parts below this get a reason

# Length in words: any answer of at least MIN words fits a factual question ("9 am."),
# an explanation needs more; beyond MAX words a chat answer is too long.
MIN_WORDS = 1
MIN_WORDS_LONG_QUESTION = 3  # for questions of more than LONG_QUESTION words
LONG_QUESTION = 20
MIN_WORDS_EXPLAIN = 8
MAX_WORDS = 120
MAX_WORDS_EXPLAIN = 220

GROUNDED_SHARE = 0.75  # this share of the answer's words in the passages scores 1
ASKED_SHARE = 0.5  # this share of the question's words in the answer scores 1
SHORT_ANSWER = 12  # words: short direct answers rarely restate the question ...
SHORT_ANSWER_FLOOR = 0.6  # ... so their question overlap is at least this
FEW_WORDS = 3  # grounding of fewer content words than this is hardly measurable ...
FEW_WORDS_FLOOR = 0.5  # ... so it is at least this
HEDGE_PENALTY = 0.2  # per distinct hedge
HEDGE_FLOOR = 0.2
PARTIAL_REFUSAL = 0.5  # certainty of an answer that refuses in part but mostly answers

_WORD = re.compile(r"\w+")
_MARKS = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_MARKER = re.compile(r"\[(\d{1,3})\]")
_CLAUSES = re.compile(
    r"(?<=[.!?;])\s+|\n+|,?\s+(?=\b(?:but|however|pero|sin embargo|mais|cependant|aber|jedoch"
    r"|mas|porem|no entanto)\b)"
)


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b")


# All cues are matched against folded text (lower case, no accents, ’ -> ').
_REFUSAL = _any(
    # en
    r"i (?:do not|don't|dont) know",
    r"i (?:could not|couldn't|couldnt|cannot|can't|cant|was unable to|am unable to) "
    r"(?:find|answer|help|say|tell|provide|access|see)",
    r"i'?m (?:not able|unable) to",
    r"i am not able to",
    r"i (?:do not|don't|dont) have (?:any |enough |that |the )?"
    r"(?:information|details|data|an answer)",
    r"(?:i'?m|i am) sorry,? (?:but )?i (?:can't|cannot|can not|couldn't|could not|don't|do not)",
    r"(?:there is|there's) no information",
    r"not (?:mentioned|covered|included) in (?:the|my) (?:information|documents|sources|passages)",
    # es
    r"no (?:lo )?se(?: la respuesta)?(?=[.,!]|$)",
    r"no lo se",
    r"no (?:pude|he podido|puedo) (?:encontrar|responder|ayudar)",
    r"no (?:encontre|he encontrado)",
    r"no (?:tengo|dispongo de) (?:informacion|datos|esa informacion)",
    r"lo siento,? (?:pero )?no (?:puedo|pude|tengo|se)",
    # fr
    r"je ne (?:sais|connais) pas",
    r"je n'ai pas (?:pu )?trouve",
    r"je n'ai pas (?:d'information|d'informations|de reponse|cette information)",
    r"je ne (?:peux|suis pas en mesure de) (?:pas )?(?:repondre|vous aider|trouver)",
    r"je ne peux pas",
    r"desole,? (?:mais )?je ne",
    # de
    r"ich weiss (?:es )?nicht",
    r"ich weiß (?:es )?nicht",
    r"(?:ich (?:konnte|kann)|(?:konnte|kann) ich) (?:\w+ ){0,5}nichts? "
    r"(?:finden|beantworten|helfen|sagen)",
    r"(?:leider )?(?:habe ich|ich habe) keine (?:informationen|angaben|antwort)",
    r"dazu liegen mir keine",
    r"tut mir leid,? (?:aber )?ich (?:kann|konnte|habe|weiss|weiß)",
    # pt
    r"(?:eu )?nao sei",
    r"nao (?:encontrei|consegui encontrar|consigo encontrar|posso responder|posso ajudar)",
    r"nao tenho (?:informacoes|informacao|dados|essa informacao)",
    r"desculpe,? (?:mas )?(?:eu )?nao (?:posso|consigo|sei|tenho)",
)
_DEFLECTION = _any(
    r"rephrase",
    r"(?:connect|put) you (?:with|in touch|through)",
    r"transfer you",
    r"reformular",
    r"(?:conectar|comunicar)(?:te|le|lo|la)? con",
    r"reformuler",
    r"vous mettre en (?:relation|contact)",
    r"umformulieren",
    r"(?:mit|an) (?:einem|einer) (?:mitarbeiter|mitarbeiterin|menschen|berater|beraterin)"
    r" (?:verbinden|weiterleiten)",
    r"conectar (?:voce|o senhor|a senhora) com",
)
_HEDGES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (cue, re.compile(r"\b" + pattern + r"\b"))
    for cue, pattern in (
        ("i think", r"i think"),
        ("i believe", r"i believe"),
        ("probably", r"probably"),
        ("possibly", r"possibly"),
        ("perhaps", r"perhaps"),
        ("maybe", r"maybe"),
        ("might", r"might"),
        ("not sure", r"(?:not|n't) (?:entirely |completely |quite )?sure"),
        ("it seems", r"it (?:seems|appears)"),
        ("creo que", r"creo que"),
        ("quizas", r"quizas?"),
        ("tal vez", r"tal vez"),
        ("probablemente", r"probablemente"),
        ("no estoy seguro", r"no estoy segur[oa]"),
        ("parece que", r"parece que"),
        ("je pense", r"je (?:pense|crois)"),
        ("peut-etre", r"peut-etre"),
        ("probablement", r"probablement"),
        ("pas sur", r"(?:je ne suis pas|pas tout a fait) sure?"),
        ("il semble", r"il (?:semble|me semble)"),
        ("ich glaube", r"ich (?:glaube|denke)"),
        ("vielleicht", r"vielleicht"),
        ("wahrscheinlich", r"wahrscheinlich"),
        ("nicht sicher", r"nicht (?:ganz )?sicher"),
        ("moglicherweise", r"moglicherweise"),
        ("acho que", r"acho que"),
        ("talvez", r"talvez"),
        ("provavelmente", r"provavelmente"),
        ("nao tenho certeza", r"nao tenho (?:certeza|a certeza)"),
    )
)
_EXPLAIN = _any(
    r"how (?:do|does|did|can|could|should|would|to)",
    r"why",
    r"explain",
    r"describe",
    r"difference",
    r"differences",
    r"compare",
    r"steps",
    r"por que",
    r"como (?:puedo|se|funciona|hago|hacer|posso|faco|fazer)",
    r"expli\w+",
    r"diferencias?",
    r"pourquoi",
    r"comment (?:faire|puis|peut|peux|est-ce|ca|fonctionne|je|on)",
    r"warum",
    r"wieso",
    r"weshalb",
    r"wie (?:kann|funktioniert|mache|geht)",
    r"erklar\w*",
    r"unterschied\w*",
    r"porque",
    r"diferencas?",
)


def _folded(text: str) -> str:
    """``text.words.fold``, faster: plain ASCII skips it, the rest drops marks with a regex."""
    text = text.replace("\u2019", "'").replace("`", "'").lower()
    if text.isascii():
        return text
    return _MARKS.sub("", unicodedata.normalize("NFKD", text))


def _words(folded: str) -> set[str]:
    """The distinct content words of folded text, as ``text.words.content_words`` has them."""
    return {stem(w) for w in set(_WORD.findall(folded)) if w not in STOPWORDS and len(w) > 1}


@lru_cache(maxsize=256)
def _passage_words(passage: str) -> frozenset[str]:
    """A passage's words; cached, since the same passages are scored again and again."""
    return frozenset(_words(_folded(passage)))


def _length_fit(question: str, words: int) -> tuple[float, str]:
    explains = _EXPLAIN.search(_folded(question)) is not None
    question_words = len(_WORD.findall(question))
    if explains:
        low, high = MIN_WORDS_EXPLAIN, MAX_WORDS_EXPLAIN
    else:
        low = MIN_WORDS_LONG_QUESTION if question_words > LONG_QUESTION else MIN_WORDS
        high = MAX_WORDS
    if words < low:
        return words / low, f"length_fit: too short for the question ({words} words)"
    if words > high:
        return high / words, f"length_fit: too long ({words} words)"
    return 1.0, ""


def _citation_use(answer: str, passages: int, cited: Sequence[int]) -> tuple[float, str]:
    # passages[i] is cited as [i + 1].
    markers = list(cited) or [int(m) for m in _MARKER.findall(answer)]
    valid = sum(1 for m in markers if 1 <= m <= passages)
    invalid = len(markers) - valid
    if not markers:
        return 0.0, "citation_use: no citation although passages were retrieved"
    score = valid / len(markers)
    if invalid:
        return score, "citation_use: cites a passage that does not exist"
    return score, ""


def _certainty(clauses: Sequence[str], refusing: bool, refused_share: float) -> tuple[float, str]:
    hedges = [cue for cue, pattern in _HEDGES if any(pattern.search(c) for c in clauses)]
    if refusing:
        score = 0.0 if refused_share >= 0.5 else PARTIAL_REFUSAL
        return score, "certainty: refuses" + (" in part" if score else "")
    if hedges:
        score = max(HEDGE_FLOOR, 1.0 - HEDGE_PENALTY * len(hedges))
        return score, "certainty: hedged (" + ", ".join(hedges) + ")"
    return 1.0, ""


def score_quality(
    question: str,
    answer: str,
    *,
    passages: Sequence[str] = (),
    cited: Sequence[int] = (),
    interrupted: bool = False,
) -> Quality:
    """Score an answer to ``question``; ``passages[i]`` is the passage cited as ``[i + 1]``."""
    text = _MARKER.sub(" ", answer)
    words = len(_WORD.findall(text))
    if words == 0:
        return Quality(0.0, (), ("empty answer", *(("interrupted",) if interrupted else ())))

    # Split into clauses; those that refuse or deflect answer nothing.
    answering: list[str] = []
    refused_words = total_words = 0
    refusing = False
    folded_clauses = [c for c in (_folded(p) for p in _CLAUSES.split(text)) if c.strip()]
    for clause in folded_clauses:
        count = len(_words(clause))
        total_words += count
        refusal = _REFUSAL.search(clause) is not None
        refusing = refusing or refusal
        if refusal or _DEFLECTION.search(clause):
            refused_words += count
        else:
            answering.append(clause)
    refused_share = refused_words / total_words if total_words else 1.0
    answer_words = _words(" ".join(answering))

    parts: dict[str, tuple[float, str]] = {"length_fit": _length_fit(question, words)}
    if passages:
        parts["citation_use"] = _citation_use(answer, len(passages), cited)
        supported: set[str] = set()
        for passage in passages:
            supported |= answer_words & _passage_words(passage)
        share = len(supported) / len(answer_words) if answer_words else 0.0
        grounding = min(1.0, share / GROUNDED_SHARE)
        if 0 < len(answer_words) < FEW_WORDS:
            grounding = max(grounding, FEW_WORDS_FLOOR)
        parts["passage_overlap"] = (
            grounding,
            f"passage_overlap: {share:.0%} of the answer's words are in the passages"
            if answer_words
            else "passage_overlap: nothing in the answer but a refusal",
        )
    asked = _words(_folded(question))
    if asked:
        coverage = len(asked & answer_words) / len(asked)
        taken_up = min(1.0, coverage / ASKED_SHARE)
        if answer_words and sum(len(_WORD.findall(c)) for c in answering) <= SHORT_ANSWER:
            taken_up = max(taken_up, SHORT_ANSWER_FLOOR)
        parts["question_overlap"] = (taken_up, "question_overlap: shares little with the question")
    parts["certainty"] = _certainty(folded_clauses, refusing, refused_share)

    total_weight = sum(WEIGHTS[name] for name in parts)
    components = tuple(
        QualityComponent(name, round(score, 4), round(WEIGHTS[name] / total_weight, 4))
        for name, (score, _) in parts.items()
    )
    score = sum(WEIGHTS[name] * value for name, (value, _) in parts.items()) / total_weight
    reasons = [reason for value, reason in parts.values() if value < LOW and reason]
    if interrupted:
        reasons.append("interrupted")
    return Quality(round(min(1.0, max(0.0, score)), 4), components, tuple(reasons))
