"""LeadScoring: how likely a conversation is to turn into business, 0..100.

Each user turn is searched for buying signals, in English, Spanish, French,
German and Portuguese (on folded text, so accents do not matter):

==================  ======  ================================================================
signal              points  fires on
==================  ======  ================================================================
pricing              +15    asking for a price, cost, quote or plans
timeline             +15    "asap", "this week", "by March", a date entity in the future
budget               +20    a money entity or amount, "our budget is", "willing to pay"
contact              +20    an email, phone, name or company not known before
decision_maker       +15    "I'm the owner / manager / CEO", "we decide", "my team"
competitor           +10    switching from or comparing with another provider
negative             -30    unsubscribe, stop contacting me, not interested, too expensive,
                            going elsewhere, just browsing
intent               +10    sales or booking intent (x its confidence, when >= 0.5)
escalation            -5    escalation intent (x its confidence, when >= 0.5)
sentiment             -5    negative sentiment (x its strength)
==================  ======  ================================================================

Each kind counts at most once a turn. A turn with a negative signal scores none
of its positive ones (the price in "too expensive" or the provider in "going
with another provider" is no interest); contact details it gives are still kept.

The score is cumulative with decay: ``new = clamp(previous * decay + sum(points),
0, 100)``, so interest fades over turns without signals (0.9 a turn by default)
and a lead must keep showing it. ``crossed_threshold`` is true on the one turn the
score rises from below the threshold to it or above. Contact details merge into
the lead's: a known value is kept, new ones fill the gaps. The state keeps the
last ``KEPT_SIGNALS`` signals. A contact signal's evidence names the kinds of
detail given ("email, phone"), not the details, to keep them out of the signal
history; other signals' evidence is the words that matched.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from fenlo_server.pipeline.analysis.types import (
    Entity,
    Intent,
    LeadSignal,
    LeadState,
    LeadUpdate,
    Sentiment,
)

KEPT_SIGNALS = 20
MIN_INTENT_CONFIDENCE = 0.5
MAX_EVIDENCE = 3  # matched phrases quoted per signal

DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "pricing": 15.0,
        "timeline": 15.0,
        "budget": 20.0,
        "contact": 20.0,
        "decision_maker": 15.0,
        "competitor": 10.0,
        "negative": -30.0,
        "intent": 10.0,
        "escalation": -5.0,
        "sentiment": -5.0,
    }
)
_LOWERING = frozenset({"negative", "escalation", "sentiment"})  # weights that must be <= 0
_PARAMS = frozenset({"threshold", "decay", "weights"})


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class LeadPolicy:
    """A workspace's lead scoring: when a lead is hot, how fast interest fades, what counts."""

    threshold: float = 70.0  # 0 < threshold <= 100: a crossing raises an event
    decay: float = 0.9  # 0..1: the previous score's multiplier each turn
    weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_WEIGHTS, hash=False)

    def __post_init__(self) -> None:
        threshold = _number("threshold", self.threshold)
        if not 0 < threshold <= 100:
            raise ValueError("threshold must be above 0 and at most 100")
        decay = _number("decay", self.decay)
        if not 0 <= decay <= 1:
            raise ValueError("decay must be between 0 and 1")
        if not isinstance(self.weights, Mapping):
            raise ValueError("weights must be a mapping of signal kind to points")
        unknown = sorted(set(self.weights) - set(DEFAULT_WEIGHTS), key=str)
        if unknown:
            raise ValueError(f"unknown signal kinds in weights: {unknown}")
        merged = dict(DEFAULT_WEIGHTS)
        for kind, points in self.weights.items():
            value = _number(f"weights.{kind}", points)
            if not -100 <= value <= 100:
                raise ValueError(f"weights.{kind} must be between -100 and 100")
            if (kind in _LOWERING and value > 0) or (kind not in _LOWERING and value < 0):
                sign = "at most" if kind in _LOWERING else "at least"
                raise ValueError(f"weights.{kind} must be {sign} 0")
            merged[kind] = value
        object.__setattr__(self, "threshold", threshold)
        object.__setattr__(self, "decay", decay)
        object.__setattr__(self, "weights", MappingProxyType(merged))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LeadPolicy:
        """From a workspace's step parameters: ``threshold``, ``decay`` and ``weights``
        (a mapping of signal kind to points; kinds left out keep their defaults)."""
        if not isinstance(params, Mapping):
            raise ValueError("lead scoring parameters must be a mapping")
        unknown = sorted(set(params) - _PARAMS, key=str)
        if unknown:
            raise ValueError(f"unknown lead scoring parameters: {unknown}")
        return cls(
            threshold=params.get("threshold", cls.threshold),
            decay=params.get("decay", cls.decay),
            weights=params.get("weights", DEFAULT_WEIGHTS),
        )


DEFAULT_POLICY = LeadPolicy()


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b")


_WEEKDAYS = (
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday"
    r"|lunes|martes|miercoles|jueves|viernes|sabado|domingo"
    r"|lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche"
    r"|montag|dienstag|mittwoch|donnerstag|freitag|samstag|sonntag"
    r"|segunda|terca|quarta|quinta|sexta"
)
_MONTHS = (
    r"january|february|march|april|may|june|july|august|september|october|november|december"
    r"|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre"
    r"|janvier|fevrier|mars|avril|mai|juin|juillet|aout|septembre|octobre|novembre|decembre"
    r"|januar|februar|marz|juni|juli|oktober|dezember"
    r"|janeiro|fevereiro|marco|maio|junho|julho|setembro|outubro|novembro|dezembro"
)
_NUMBER = r"(?:\d+|a|one|two|three|four|few|un|une|uno|una|dos|tres|deux|trois|zwei|drei|um|duas)"

# Matched against folded text: lower case, no accents, ’ as '.
_PATTERNS: dict[str, re.Pattern[str]] = {
    "pricing": _any(
        r"price|prices|pricing|priced|cost|costs|quote|quotation|how much|rates|fees?|tariffs?",
        r"(?:which|what|your|the|pricing|paid|pro|basic|premium|business|enterprise) plans?",
        r"precios?|cuanto (?:cuesta|cuestan|vale|valen|sale|cobran)|cotizacion|tarifas?",
        r"(?:un|pedir|solicitar|enviar(?:me|nos)?|darme|me das|me da) presupuesto",
        r"planes|costos?|coste",
        r"prix|tarifs?|devis|couts?|formules?|c'est combien",
        r"combien (?:ca |cela |il |elle |ils |elles )?(?:coute|coutent|facturez|prenez)",
        r"preise?|preisliste|kosten|kostet|wie ?viel|angebot|kostenvoranschlag|tarife?",
        r"precos?|quanto (?:custa|custam|e|fica|cobram)|custos?|cotacao|planos",
        r"(?:um|pedir|solicitar|enviar|fazer um|me passar um) orcamento",
    ),
    "timeline": _any(
        r"asap|as soon as possible|urgent|urgently|right away|immediately|deadline",
        r"(?:this|next|coming) (?:week|month|quarter|year|weekend)",
        r"(?:by|before) (?:the end of |next )?(?:" + _WEEKDAYS + "|" + _MONTHS + r")",
        r"(?:by|before|for|until) (?:the end of|end of|today|tonight|tomorrow)",
        r"(?:in|within) (?:the next )?" + _NUMBER + r" (?:days?|weeks?|months?)",
        r"lo antes posible|cuanto antes|urgente|esta semana|este mes|para (?:hoy|manana)",
        r"(?:la )?(?:proxima semana|semana que viene|proximo mes|mes que viene)",
        r"(?:para|antes del?) (?:el )?(?:"
        + _WEEKDAYS
        + "|"
        + _MONTHS
        + r"|fin de (?:mes|semana|ano))",
        r"en " + _NUMBER + r" (?:dias|semanas|meses)",
        r"des que possible|au plus vite|le plus tot possible|urgente?",
        r"(?:pour|d'ici|avant) (?:aujourd'hui|demain|ce soir)",
        r"cette semaine|la semaine prochaine|ce mois(?:-ci)?|le mois prochain",
        r"(?:d'ici|avant) (?:le |la )?(?:" + _WEEKDAYS + "|" + _MONTHS + r"|fin)"
        r"(?: du mois| de la semaine| de l'annee)?",
        r"so (?:schnell|bald) wie moglich|dringend|diese woche|nachste woche",
        r"(?:bis|fur) (?:heute|morgen)",
        r"(?:diesen|nachsten) monat|bis (?:zum |ende |nachste )?(?:"
        + _WEEKDAYS
        + "|"
        + _MONTHS
        + r"|ende|nachste(?:n|r)? (?:woche|monat|jahr))",
        r"o mais rapido possivel|o quanto antes|urgente|esta semana|semana que vem",
        r"(?:para|ate) (?:hoje|amanha)",
        r"proxima semana|(?:este|proximo) mes|mes que vem",
        r"ate (?:a |o )?(?:"
        + _WEEKDAYS
        + "|"
        + _MONTHS
        + r"|fim|final)(?: do mes| da semana| do ano)?",
    ),
    "budget": _any(
        r"budget|budgeted|can spend|(?:willing|able|ready|happy) to (?:spend|pay|invest)",
        r"afford|up to [$€£]?\d",
        r"(?:nuestro|mi|tenemos un) presupuesto|dispuestos? a (?:pagar|gastar|invertir)",
        r"podemos (?:gastar|pagar|invertir)",
        r"(?:pret|prete|prets|pretes) a (?:payer|depenser|investir)",
        r"(?:on|nous) (?:peut|pouvons) (?:mettre|depenser|payer)",
        r"bereit,? (?:\w+ )?(?:zu )?(?:zahlen|bezahlen|investieren|auszugeben)",
        r"(?:unser|mein) (?:budget|etat)",
        r"(?:nosso|meu|temos um) orcamento|verba|dispostos? a (?:pagar|gastar|investir)",
    ),
    "decision_maker": _any(
        r"(?:i'?m|i am) (?:the |a )?(?:owner|co-?owner|founder|co-?founder|ceo|cto|cfo|coo"
        r"|manager|director|head of \w+|decision[- ]maker|buyer|partner|president)",
        r"i (?:own|run|manage) (?:the|a|an|my|our)",
        r"(?:we|i) (?:decide|make the decisions?|sign off)",
        r"my (?:team|company|business|staff|employees)",
        r"our (?:team|company)",
        r"soy (?:el |la )?(?:duen[oa]|gerente|director[a]?|fundador[a]?|ceo|responsable"
        r"|jef[ea]|propietari[oa]|socio|socia)",
        r"mi (?:equipo|empresa|negocio)|(?:nosotros|yo) decid(?:imos|o)",
        r"je suis (?:le |la |l')?(?:proprietaire|gerante?|directeur|directrice|fondateur"
        r"|fondatrice|responsable|patron|patronne|pdg|ceo|decideur)",
        r"mon (?:equipe|entreprise)|mon entreprise|ma societe|nous decidons"
        r"|c'est moi qui decide",
        r"ich bin (?:der |die )?(?:inhaber(?:in)?|geschaftsfuhrer(?:in)?|grunder(?:in)?"
        r"|chef(?:in)?|leiter(?:in)?|eigentumer(?:in)?|ceo|entscheider(?:in)?)",
        r"mein (?:team|unternehmen|betrieb)|meine firma|(?:wir|ich) entscheide(?:n)?",
        r"sou (?:o |a )?(?:dono|dona|gerente|diretor[a]?|fundador[a]?|responsavel|ceo"
        r"|proprietari[oa]|socio|socia)",
        r"minha (?:equipe|empresa)|meu (?:time|negocio)|(?:nos|eu) decid(?:imos|o)",
    ),
    "competitor": _any(
        r"switch(?:ing)? (?:from|over from)|move (?:away )?from|migrat(?:e|ing) from",
        r"(?:currently|right now) (?:use|using|with|on)|we (?:currently )?use \w+ (?:now|today)",
        r"compar(?:e|ed|ing) (?:you |it |this )?(?:to|with)|comparing|versus|vs\.?",
        r"(?:other|another|current|alternative) (?:provider|vendor|supplier|tool|solution)",
        r"alternative to|better than \w+|cheaper than",
        r"cambiar(?:nos)? de|actualmente (?:usamos|utilizamos|trabajamos con)|comparando",
        r"(?:otro|actual) proveedor|en comparacion con",
        r"passer de|changer de (?:fournisseur|prestataire|solution)"
        r"|actuellement (?:nous utilisons|on utilise|chez)",
        r"compar(?:er|ons|e a|aison)|(?:autre|actuel) (?:fournisseur|prestataire)",
        r"wechseln von|wechsel von|(?:nutzen|verwenden) (?:derzeit|aktuell|momentan)",
        r"vergleich(?:en|e)?|(?:anderen?|aktuellen?) anbieter|im vergleich zu",
        r"(?:mudar|trocar|migrar) de|atualmente (?:usamos|utilizamos)|comparando|comparar",
        r"(?:outro|atual) fornecedor|em comparacao com",
    ),
    "negative": _any(
        r"unsubscribe|opt[- ]out|remove me from|stop (?:contacting|emailing|calling|texting"
        r"|messaging|sending)|(?:don't|do not) (?:contact|email|call) me",
        r"not interested|no longer interested|too expensive|too pricey|too costly",
        r"can't afford|cannot afford|going (?:elsewhere|with (?:another|someone else|a different))",
        r"go (?:elsewhere|with (?:another|someone else|a different))"
        r"|(?:chose|choose|picked|went with) (?:another|someone else|a different)",
        r"just (?:browsing|looking)|only (?:browsing|looking)",
        r"dar(?:me)? de baja|darse de baja|no me interesa|no (?:estoy|estamos) interesad[oa]s?",
        r"demasiado car[oa]|muy car[oa]|dej(?:en|e|a) de (?:llamar|escribir|contactar|enviar)",
        r"(?:solo|solamente) (?:estoy |estaba )?mirando|(?:nos vamos|me voy|iremos) con otr[oa]",
        r"desabonn\w*|desinscri\w*|ne m'interesse pas|pas interesse(?:e|s)?|trop cher(?:e|s)?",
        r"arretez de (?:m'appeler|me contacter|m'ecrire|m'envoyer)",
        r"je ne fais que regarder|je regarde (?:juste|seulement|simplement)",
        r"(?:aller|allons|irons|vais) (?:voir )?ailleurs",
        r"abmelden|abbestellen|kein interesse|nicht (?:mehr )?interessiert|zu teuer",
        r"nicht mehr (?:kontaktieren|anrufen|anschreiben|schreiben)",
        r"(?:schaue|sehe) mich nur um|(?:schauen|sehen) uns nur um|nur am (?:schauen|stobern)",
        r"(?:gehen|gehe) woanders(?:hin)?|anderen anbieter (?:entschieden|gewahlt)",
        r"descadastr\w*|cancelar (?:a )?inscricao|nao tenho interesse",
        r"nao (?:estou|estamos) interessad[oa]s?|caro demais|muito car[oa]",
        r"par(?:e|em) de (?:me )?(?:ligar|contatar|contactar|enviar|mandar)",
        r"(?:so|apenas) (?:estou )?olhando|(?:vou|vamos) (?:para|com) outr[oa]",
    ),
}
# "no budget", "sin presupuesto": the budget word is no budget signal.
_NO_BUDGET = _any(
    r"(?:no|without|don't have a|do not have a|haven't got a) budget",
    r"(?:sin|no tenemos|no hay) presupuesto",
    r"(?:pas de|sans) budget",
    r"(?:kein|keinen|ohne) budget",
    r"(?:sem|nao temos) orcamento",
)
_MONEY = re.compile(
    r"(?:r\$|[$€£])\s?\d[\d.,]*\s?k?\b|\b\d[\d.,]*\s?(?:k\s?)?(?:€|eur|euros?|usd|dollars?|£|gbp"
    r"|pounds|reais|brl)(?!\w)",
    re.IGNORECASE,
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)
_NAME = re.compile(
    r"\b(?i:my name is|i'm called|me llamo|mi nombre es|je m'appelle|mon nom est"
    r"|ich heisse|ich heiße|mein name ist|meu nome é|meu nome e|me chamo)\s+"
    r"([A-ZÀ-ÖØ-Þ][\w'-]+(?:\s+[A-ZÀ-ÖØ-Þ][\w'-]+)?)"
)
_ENTITY_CONTACT = {"email": "email", "phone": "phone", "person": "name"}


def _fold_mapped(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its characters, the index of the original one."""
    out: list[str] = []
    origin: list[int] = []
    for i, char in enumerate(text.replace("\u2019", "'")):
        folded = "".join(
            c for c in unicodedata.normalize("NFKD", char.lower()) if not unicodedata.combining(c)
        )
        out.append(folded)
        origin.extend([i] * len(folded))
    return "".join(out), origin


def _matches(pattern: re.Pattern[str], folded: str, origin: list[int], text: str) -> list[str]:
    found: list[str] = []
    for match in pattern.finditer(folded):
        if match.end() > match.start():
            words = text[origin[match.start()] : origin[match.end() - 1] + 1]
            if words.lower() not in (w.lower() for w in found):
                found.append(words)
    return found


def _future_dates(entities: Sequence[Entity], now: datetime) -> list[str]:
    found: list[str] = []
    for entity in entities:
        if entity.kind != "date_time":
            continue
        try:
            when = datetime.fromisoformat(entity.value)
        except ValueError:
            continue
        if when.tzinfo is None:  # compare like with like: naive values are the user's time
            reference = now.replace(tzinfo=None)
        else:
            reference = now if now.tzinfo else now.replace(tzinfo=UTC)
        date_only = len(entity.value.strip()) <= len("YYYY-MM-DD")
        if (when.date() >= reference.date()) if date_only else (when > reference):
            found.append(entity.text)
    return found


def _turn_contact(
    text: str, entities: Sequence[Entity], contact: Mapping[str, str]
) -> dict[str, str]:
    """The contact details of this turn: given ones first, then entities, then the text."""
    found: dict[str, str] = {}
    for key, value in contact.items():
        if isinstance(value, str) and value.strip():
            found[key] = value.strip()
    for entity in entities:
        detail = _ENTITY_CONTACT.get(entity.kind)
        value = (entity.value or entity.text).strip()
        if detail and value:
            found.setdefault(detail, value)
    if "email" not in found and (email := _EMAIL.search(text)):
        found["email"] = email.group(0).lower()
    if "name" not in found and (name := _NAME.search(text)):
        found["name"] = name.group(1)
    return found


def score_lead(
    text: str,
    previous: LeadState,
    *,
    entities: Sequence[Entity] = (),
    intent: Intent | None = None,
    sentiment: Sentiment | None = None,
    contact: Mapping[str, str] = MappingProxyType({}),
    policy: LeadPolicy = DEFAULT_POLICY,
    now: datetime | None = None,
) -> LeadUpdate:
    """Score one user turn on top of the lead so far.

    ``entities``, ``intent`` and ``sentiment`` are what the other analysers found in
    the same turn; ``contact`` holds details the caller already knows for it (e.g.
    from a form or the caller id). ``now`` decides which date entities lie ahead.
    """
    weights = policy.weights
    folded, origin = _fold_mapped(text)
    evidence: dict[str, list[str]] = {}
    for kind, pattern in _PATTERNS.items():
        found = _matches(pattern, folded, origin, text)
        if kind == "budget" and _NO_BUDGET.search(folded):
            found = []
        if found:
            evidence[kind] = found
    dates = _future_dates(entities, now or datetime.now(UTC))
    if dates:
        evidence["timeline"] = [*evidence.get("timeline", []), *dates]
    money = [e.text for e in entities if e.kind == "money"] or [
        m.group(0).strip() for m in _MONEY.finditer(text)
    ]
    if money and not _NO_BUDGET.search(folded):
        evidence.setdefault("budget", []).extend(money)

    merged = dict(previous.contact)
    given = _turn_contact(text, entities, contact)
    new_keys = [key for key in given if not merged.get(key)]
    for key in new_keys:
        merged[key] = given[key]

    negative = "negative" in evidence
    signals: list[LeadSignal] = []
    for kind in ("pricing", "timeline", "budget", "decision_maker", "competitor"):
        if kind in evidence and not negative:
            quoted = ", ".join(evidence[kind][:MAX_EVIDENCE])
            signals.append(LeadSignal(kind, weights[kind], quoted))
    if new_keys and not negative:
        signals.append(LeadSignal("contact", weights["contact"], ", ".join(new_keys)))
    if negative:
        quoted = ", ".join(evidence["negative"][:MAX_EVIDENCE])
        signals.append(LeadSignal("negative", weights["negative"], quoted))
    if intent is not None and intent.confidence >= MIN_INTENT_CONFIDENCE:
        if intent.kind in ("sales", "booking") and not negative:
            points = round(weights["intent"] * intent.confidence, 2)
            signals.append(LeadSignal("intent", points, f"{intent.kind} intent"))
        elif intent.kind == "escalation":
            points = round(weights["escalation"] * intent.confidence, 2)
            signals.append(LeadSignal("escalation", points, "escalation intent"))
    if sentiment is not None and sentiment.label == "negative":
        strength = min(1.0, abs(sentiment.score)) or 1.0
        points = round(weights["sentiment"] * strength, 2)
        signals.append(LeadSignal("sentiment", points, "negative sentiment"))
    signals = [s for s in signals if s.points != 0]

    before = previous.score
    score = min(100.0, max(0.0, before * policy.decay + sum(s.points for s in signals)))
    state = LeadState(
        score=score,
        turns=previous.turns + 1,
        signals=(*previous.signals, *signals)[-KEPT_SIGNALS:],
        contact=merged,
    )
    crossed = before < policy.threshold <= score
    return LeadUpdate(state, score - before, tuple(signals), crossed)
