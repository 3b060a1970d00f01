"""LeadScoring: buying signals in five languages add up over a conversation with decay,
negative signals pull the score down, contact details merge, and the threshold event
fires on the one turn the score crosses it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from fenlo_server.pipeline.analysis.lead import (
    DEFAULT_WEIGHTS,
    KEPT_SIGNALS,
    LeadPolicy,
    score_lead,
)
from fenlo_server.pipeline.analysis.types import (
    Entity,
    Intent,
    LeadSignal,
    LeadState,
    LeadUpdate,
    Sentiment,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def turn(text: str, previous: LeadState | None = None, **kwargs: Any) -> LeadUpdate:
    return score_lead(text, previous or LeadState(), now=NOW, **kwargs)


def kinds(update: LeadUpdate) -> list[str]:
    return [s.kind for s in update.signals]


def signal(update: LeadUpdate, kind: str) -> LeadSignal:
    return next(s for s in update.signals if s.kind == kind)


# --- each signal, in each language ---------------------------------------------------

SIGNALS = [
    ("pricing", "How much does the pro plan cost?", "How much"),
    ("pricing", "Can you send me a quote?", "quote"),
    ("pricing", "¿Cuánto cuesta el plan básico?", "Cuánto cuesta"),
    ("pricing", "Quel est le prix de l'abonnement ?", "prix"),
    ("pricing", "Combien ça coûte ?", "Combien ça coûte"),
    ("pricing", "Was kostet das Premium-Paket?", "kostet"),
    ("pricing", "Qual é o preço do plano?", "preço"),
    ("timeline", "We need it asap", "asap"),
    ("timeline", "We'd like to start this week", "this week"),
    ("timeline", "It has to be live by March", "by March"),
    ("timeline", "Lo necesitamos lo antes posible", "lo antes posible"),
    ("timeline", "Nous en avons besoin d'ici la fin du mois", "d'ici la fin du mois"),
    ("timeline", "Wir brauchen es bis nächste Woche", "bis nächste Woche"),
    ("timeline", "Precisamos até o final do mês", "até o final do mês"),
    ("budget", "Our budget is around five thousand", "budget"),
    ("budget", "We're willing to pay up to $200 a month", "willing to pay"),
    ("budget", "Nuestro presupuesto es de 3000 euros", "Nuestro presupuesto"),
    ("budget", "Notre budget est de 2000 €", "2000 €"),
    ("budget", "Unser Budget liegt bei 5.000 EUR", "5.000 EUR"),
    ("budget", "Nosso orçamento é de R$ 10 mil", "Nosso orçamento"),
    ("decision_maker", "I'm the owner of the clinic", "I'm the owner"),
    ("decision_maker", "I am the CEO", "I am the CEO"),
    ("decision_maker", "We decide as a team", "We decide"),
    ("decision_maker", "My team handles the bookings", "My team"),
    ("decision_maker", "Soy la dueña del restaurante", "Soy la dueña"),
    ("decision_maker", "Je suis le gérant du magasin", "Je suis le gérant"),
    ("decision_maker", "Ich bin der Geschäftsführer", "Ich bin der Geschäftsführer"),
    ("decision_maker", "Sou o dono da loja", "Sou o dono"),
    ("competitor", "We're switching from Zendesk", "switching from"),
    ("competitor", "I'm comparing you with another provider", "comparing you with"),
    ("competitor", "Actualmente usamos HubSpot", "Actualmente usamos"),
    ("competitor", "Nous voulons passer de Zendesk à votre solution", "passer de"),
    ("competitor", "Wir wechseln von Salesforce", "wechseln von"),
    ("competitor", "Queremos trocar de fornecedor", "trocar de"),
]


@pytest.mark.parametrize(("kind", "text", "evidence"), SIGNALS)
def test_signals_in_five_languages_with_the_matched_words(
    kind: str, text: str, evidence: str
) -> None:
    update = turn(text)
    assert kind in kinds(update), update.signals
    found = signal(update, kind)
    assert evidence in found.evidence.split(", ")
    assert found.points == DEFAULT_WEIGHTS[kind]
    assert update.state.score == pytest.approx(sum(s.points for s in update.signals))


NEGATIVES = [
    ("Please unsubscribe me", "unsubscribe"),
    ("Stop contacting me", "Stop contacting"),
    ("I'm not interested", "not interested"),
    ("Too expensive, we're going elsewhere", "Too expensive"),
    ("We chose another provider", "chose another"),
    ("I'm just browsing", "just browsing"),
    ("Darme de baja, no me interesa", "no me interesa"),
    ("Solo estoy mirando", "Solo estoy mirando"),
    ("Désabonnez-moi, c'est trop cher", "trop cher"),
    ("Je regarde seulement", "Je regarde seulement"),
    ("Bitte abmelden, kein Interesse", "kein Interesse"),
    ("Das ist zu teuer", "zu teuer"),
    ("Não tenho interesse, muito caro", "muito caro"),
    ("Só estou olhando", "Só estou olhando"),
]


@pytest.mark.parametrize(("text", "evidence"), NEGATIVES)
def test_negative_signals_lower_the_score(text: str, evidence: str) -> None:
    warm = LeadState(score=50.0, turns=3)
    update = turn(text, warm)
    assert kinds(update) == ["negative"]
    assert evidence in signal(update, "negative").evidence.split(", ")
    assert update.state.score == pytest.approx(50.0 * 0.9 - 30.0)
    assert update.change == pytest.approx(15.0 - 50.0)


def test_a_negative_turn_scores_none_of_its_positive_signals() -> None:
    # The price and the other provider are the complaint, not interest.
    update = turn("Your price is too expensive, we're going with another provider", LeadState(40))
    assert kinds(update) == ["negative"]
    assert update.state.score == pytest.approx(40 * 0.9 - 30)


@pytest.mark.parametrize(
    "text",
    [
        "Are you open today?",
        "Guten Morgen, wie sind die Öffnungszeiten?",
        "How long does shipping take?",
        "Combien de temps pour la livraison ?",
        "Can I cancel my subscription?",
        "What's the weather like?",
        "",
    ],
)
def test_ordinary_questions_carry_no_signal(text: str) -> None:
    update = turn(text)
    assert update.signals == ()
    assert update.state.score == 0.0


@pytest.mark.parametrize(
    "text", ["We don't have a budget yet", "No tenemos presupuesto", "Wir haben kein Budget"]
)
def test_no_budget_is_no_budget_signal(text: str) -> None:
    assert "budget" not in kinds(turn(text))


def test_each_kind_counts_once_a_turn_with_up_to_three_quotes() -> None:
    update = turn("What's the price? And the cost of the plans? Any fees? Quote please")
    assert kinds(update) == ["pricing"]
    assert len(signal(update, "pricing").evidence.split(", ")) == 3


# --- entities ------------------------------------------------------------------------


def test_money_entities_are_budget_and_future_dates_are_timeline() -> None:
    text = "Something around 5k, and the launch on the 14th"
    entities = [
        Entity("money", "5k", "5000 USD", 17, 19),
        Entity("date_time", "the 14th", "2025-03-14", 39, 47),
    ]
    update = turn(text, entities=entities)
    assert signal(update, "budget").evidence == "5k"
    assert signal(update, "timeline").evidence == "the 14th"


@pytest.mark.parametrize(
    ("value", "future"),
    [
        ("2025-03-01", True),  # today counts
        ("2025-02-28", False),
        ("2025-03-01T13:00:00+00:00", True),
        ("2025-03-01T11:00:00+00:00", False),
        ("2025-06-01T09:00:00", True),  # naive
        ("2024-12-24T09:00:00", False),
        ("not a date", False),
    ],
)
def test_only_dates_ahead_are_a_timeline(value: str, future: bool) -> None:
    update = turn("the date", entities=[Entity("date_time", "the date", value, 0, 8)])
    assert ("timeline" in kinds(update)) is future


# --- contact -------------------------------------------------------------------------


def test_contact_details_from_the_caller_entities_and_text_merge_into_the_lead() -> None:
    update = turn(
        "Hi, my name is Ana Ruiz, write to ana.ruiz@example.com",
        entities=[Entity("phone", "600 123 456", "+34600123456", 0, 0)],
        contact={"company": "Ruiz Dental"},
    )
    assert update.state.contact == {
        "company": "Ruiz Dental",
        "phone": "+34600123456",
        "email": "ana.ruiz@example.com",
        "name": "Ana Ruiz",
    }
    contact = signal(update, "contact")
    assert contact.points == 20.0
    assert contact.evidence == "company, phone, email, name"  # what was given, not the values


def test_known_contact_values_are_kept_and_new_ones_fill_the_gaps() -> None:
    known = LeadState(score=20, turns=1, contact={"email": "ana@example.com"})
    update = turn(
        "Me llamo Ana", known, contact={"email": "other@example.com", "phone": "+34600000000"}
    )
    assert update.state.contact == {
        "email": "ana@example.com",
        "phone": "+34600000000",
        "name": "Ana",
    }
    assert signal(update, "contact").evidence == "phone, name"
    assert known.contact == {"email": "ana@example.com"}  # the previous state is untouched


def test_repeating_known_details_earns_nothing() -> None:
    known = LeadState(score=20, turns=1, contact={"email": "ana@example.com"})
    update = turn("It's ana@example.com", known, contact={"email": "ana@example.com"})
    assert update.signals == ()
    assert update.state.score == pytest.approx(18.0)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("My name is John Smith", "John Smith"),
        ("Je m'appelle Claire", "Claire"),
        ("Ich heiße Jürgen Weiß", "Jürgen Weiß"),
        ("Meu nome é João", "João"),
    ],
)
def test_names_given_in_the_text(text: str, name: str) -> None:
    assert turn(text).state.contact == {"name": name}


def test_a_negative_turn_still_keeps_its_contact_details_without_points() -> None:
    update = turn("Unsubscribe bob@example.com please", LeadState(30))
    assert update.state.contact == {"email": "bob@example.com"}
    assert kinds(update) == ["negative"]


# --- intent and sentiment ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sales", "booking"])
def test_sales_or_booking_intent_adds_by_confidence(kind: str) -> None:
    update = turn("ok", intent=Intent(kind, 0.8))  # type: ignore[arg-type]
    assert signal(update, "intent").points == pytest.approx(8.0)
    assert update.state.score == pytest.approx(8.0)


def test_weak_or_other_intents_add_nothing() -> None:
    assert turn("ok", intent=Intent("sales", 0.4)).signals == ()
    assert turn("ok", intent=Intent("faq", 0.9)).signals == ()


def test_escalation_and_negative_sentiment_subtract_a_little() -> None:
    update = turn(
        "How much is it?",
        LeadState(50),
        intent=Intent("escalation", 1.0),
        sentiment=Sentiment("negative", -0.6),
    )
    assert kinds(update) == ["pricing", "escalation", "sentiment"]
    assert signal(update, "escalation").points == pytest.approx(-5.0)
    assert signal(update, "sentiment").points == pytest.approx(-3.0)
    assert update.state.score == pytest.approx(45 + 15 - 5 - 3)
    assert turn("ok", sentiment=Sentiment("positive", 0.9)).signals == ()


# --- accumulation, decay, threshold --------------------------------------------------


def test_score_accumulates_with_decay_over_turns() -> None:
    state = LeadState()
    expected = 0.0
    conversation = [
        ("Hi, what plans do you have?", 15),  # pricing
        ("I'm the owner, we need it by March", 30),  # decision maker + timeline
        ("Thanks", 0),
        ("Our budget is $3,000", 20),
    ]
    for text, points in conversation:
        update = turn(text, state)
        expected = expected * 0.9 + points
        assert update.state.score == pytest.approx(expected)
        assert update.change == pytest.approx(update.state.score - state.score)
        state = update.state
    assert state.turns == 4
    assert [s.kind for s in state.signals] == [
        "pricing",
        "timeline",
        "decision_maker",
        "budget",
    ]


def test_interest_fades_without_signals() -> None:
    state = LeadState(score=80.0, turns=5)
    for _ in range(10):
        state = turn("ok", state).state
    assert state.score == pytest.approx(80 * 0.9**10)


def test_threshold_is_crossed_exactly_once() -> None:
    state = LeadState()
    crossings = []
    messages = [
        "How much does the enterprise plan cost?",
        "I'm the CEO and our budget is $10,000",
        "We need it this week, my email is ceo@example.com",
        "Also, what about the pricing for extra seats?",
        "And the cost of onboarding?",
        "Thanks!",
    ]
    for text in messages:
        update = turn(text, state)
        crossings.append(update.crossed_threshold)
        state = update.state
    assert crossings == [False, False, True, False, False, False]
    assert state.score >= 70


def test_crossing_again_after_falling_back() -> None:
    policy = LeadPolicy(threshold=30)
    first = turn("Price? I'm the owner", LeadState(), policy=policy)
    assert first.crossed_threshold  # 0 -> 30: reaching the threshold counts
    low = turn("not interested", first.state, policy=policy)
    assert not low.crossed_threshold and low.state.score < 30
    again = turn("Actually, what's the price? Our budget is $500", low.state, policy=policy)
    assert again.crossed_threshold


def test_score_is_clamped_to_0_and_100() -> None:
    hot = turn(
        "I'm the owner, our budget is $9k, how much for the pro plan? We need it asap, "
        "switching from Acme. Email: x@example.com",
        LeadState(95),
    )
    assert hot.state.score == 100.0
    cold = turn("unsubscribe", LeadState(5))
    assert cold.state.score == 0.0
    assert cold.change == pytest.approx(-5.0)


def test_state_keeps_the_last_signals_only() -> None:
    state = LeadState()
    for i in range(30):
        state = turn(f"What's the price of plan {i}?", state).state
    assert len(state.signals) == KEPT_SIGNALS
    assert state.turns == 30


# --- policy --------------------------------------------------------------------------


def test_policy_from_params_overrides_only_what_it_names() -> None:
    policy = LeadPolicy.from_params(
        {"threshold": 50, "decay": 1, "weights": {"budget": 40, "negative": -50}}
    )
    assert policy.threshold == 50.0 and policy.decay == 1.0
    assert policy.weights["budget"] == 40.0
    assert policy.weights["negative"] == -50.0
    assert policy.weights["pricing"] == DEFAULT_WEIGHTS["pricing"]
    assert LeadPolicy.from_params({}) == LeadPolicy()


def test_policy_weights_and_decay_change_the_score() -> None:
    policy = LeadPolicy.from_params({"decay": 1.0, "weights": {"pricing": 25, "competitor": 0}})
    update = turn("How much? We're switching from Acme", LeadState(10), policy=policy)
    assert kinds(update) == ["pricing"]  # a zero weight adds no signal
    assert update.state.score == pytest.approx(35.0)


@pytest.mark.parametrize(
    "params",
    [
        {"threshold": "70"},
        {"threshold": 0},
        {"threshold": 101},
        {"threshold": True},
        {"decay": 1.5},
        {"decay": -0.1},
        {"decay": None},
        {"decay": math.nan},
        {"weights": [1, 2]},
        {"weights": {"pricing": "15"}},
        {"weights": {"pricing": -5}},
        {"weights": {"negative": 10}},
        {"weights": {"pricing": 500}},
        {"weights": {"wishes": 5}},
        {"treshold": 70},
    ],
)
def test_policy_validation_rejects_wrong_values(params: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LeadPolicy.from_params(params)


def test_policy_rejects_a_non_mapping() -> None:
    with pytest.raises(ValueError):
        LeadPolicy.from_params([("threshold", 70)])  # type: ignore[arg-type]
