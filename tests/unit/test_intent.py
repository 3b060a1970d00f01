"""IntentClassifier: keyword rules alone, and rules with nearest prototypes from the
real multilingual Universal Sentence Encoder; accuracy on bench/intent_eval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fenlo_server.knowledge.embedders import UseMultilingualEmbedder
from fenlo_server.pipeline.analysis.intent import (
    INTENTS,
    PROTOTYPES,
    RULES,
    IntentClassifier,
    _normal,
    _text_grams,
    classify_rules,
)
from fenlo_server.pipeline.analysis.types import IntentKind

MESSAGES = Path(__file__).resolve().parents[2] / "bench" / "intent_eval" / "messages.jsonl"

CLEAR: list[tuple[str, IntentKind]] = [
    ("What are your opening hours on Saturday?", "faq"),
    ("¿Dónde están ubicados?", "faq"),
    ("Quels sont vos horaires d'ouverture ?", "faq"),
    ("Wo befindet sich Ihre Praxis?", "faq"),
    ("Vocês aceitam cartão de crédito?", "faq"),
    ("I'd like to book an appointment for next Tuesday.", "booking"),
    ("Quiero reservar una mesa para cuatro.", "booking"),
    ("Je voudrais prendre rendez-vous demain.", "booking"),
    ("Ich möchte meinen Termin verschieben.", "booking"),
    ("Gostaria de marcar uma consulta.", "booking"),
    ("How much does the premium plan cost?", "sales"),
    ("¿Cuánto cuesta una limpieza dental?", "sales"),
    ("Pouvez-vous m'envoyer un devis ?", "sales"),
    ("Gibt es einen Rabatt für Studenten?", "sales"),
    ("Quanto custa o plano anual?", "sales"),
    ("I can't log in to my account.", "support"),
    ("El producto llegó roto.", "support"),
    ("Ma commande n'est jamais arrivée.", "support"),
    ("Die App funktioniert nicht.", "support"),
    ("O produto veio com defeito.", "support"),
    ("I want to speak to a manager.", "escalation"),
    ("Quiero hablar con una persona.", "escalation"),
    ("Je veux parler à un responsable.", "escalation"),
    ("Ich möchte mich beschweren.", "escalation"),
    ("Quero falar com um atendente humano.", "escalation"),
    ("Hello!", "other"),
    ("Muchas gracias", "other"),
    ("Merci, bonne journée", "other"),
    ("Hallo zusammen", "other"),
    ("Olá, tudo bem?", "other"),
]


def load_messages() -> list[dict[str, str]]:
    return [json.loads(line) for line in MESSAGES.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def use() -> Iterator[UseMultilingualEmbedder]:
    embedder = UseMultilingualEmbedder()
    yield embedder
    embedder.close()


@pytest.mark.parametrize(("text", "kind"), CLEAR)
def test_rules_alone(text: str, kind: IntentKind) -> None:
    intent = classify_rules(text)
    assert intent.kind == kind
    assert 0.0 <= intent.confidence <= 1.0
    assert intent.reasons and intent.reasons[0].startswith(f"{kind}: ")


@pytest.mark.parametrize(("text", "kind"), CLEAR)
async def test_with_the_multilingual_embedder(
    use: UseMultilingualEmbedder, text: str, kind: IntentKind
) -> None:
    intent = await IntentClassifier(use).classify(text)
    assert intent.kind == kind
    assert 0.0 <= intent.confidence <= 1.0
    assert any(r.startswith(f"{kind} prototype: ") for r in intent.reasons)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Hi, I'd like to book a cleaning for Friday morning.", "booking"),
        ("Thanks, but the link you sent doesn't work.", "support"),
        ("Do you take walk-ins or is it appointment only?", "faq"),
        ("I never got the confirmation email for my booking.", "support"),
        ("My refund hasn't come after 4 emails, escalate this now.", "escalation"),
        ("Are you a robot?", "other"),
        ("What time is it in Tokyo?", "other"),
    ],
)
def test_hard_cases_by_rules(text: str, kind: IntentKind) -> None:
    assert classify_rules(text).kind == kind


def test_no_cues() -> None:
    question = classify_rules("Is the thing purple?")
    assert question.kind == "faq"
    assert "faq: a question without other cues" in question.reasons
    statement = classify_rules("purple elephants")
    assert statement.kind == "other"
    assert statement.confidence < 0.6


async def test_without_an_embedder_it_is_the_rules() -> None:
    classifier = IntentClassifier()
    vector = np.ones(512, dtype=np.float32) / np.sqrt(512)
    for text, _ in CLEAR[:6]:
        assert await classifier.classify(text, vector) == classify_rules(text)


async def test_precomputed_vector_gives_the_same_result_without_a_model_call(
    use: UseMultilingualEmbedder,
) -> None:
    classifier = IntentClassifier(use)
    texts = [text for text, _ in CLEAR] + [m["text"] for m in load_messages()[::25]]
    embedded = [await classifier.classify(text) for text in texts]
    vectors = [await use.embed_query(text) for text in texts]
    calls = use.model_calls
    given = [await classifier.classify(t, v) for t, v in zip(texts, vectors, strict=True)]
    assert use.model_calls == calls  # prototypes embedded once, the message not again
    assert given == embedded


async def test_a_vector_of_another_model_is_ignored(use: UseMultilingualEmbedder) -> None:
    classifier = IntentClassifier(use)
    text = "Can I move my appointment to Thursday?"
    other_model = np.ones(384, dtype=np.float32) / np.sqrt(384)
    assert await classifier.classify(text, other_model) == await classifier.classify(text)


async def test_prototypes_are_embedded_once(use: UseMultilingualEmbedder) -> None:
    classifier = IntentClassifier(use)
    await classifier.classify("Hello")
    calls = use.model_calls
    await classifier.classify("Hello")  # the query is cached, the prototypes kept
    assert use.model_calls == calls
    assert all(10 <= len(examples) <= 24 for examples in PROTOTYPES.values())  # a modest set


def test_labelled_set_shape() -> None:
    messages = load_messages()
    assert len(messages) >= 160
    assert len({m["id"] for m in messages}) == len(messages)
    for kind in INTENTS:
        assert sum(m["intent"] == kind for m in messages) >= 20
    assert sum(m["language"] != "en" for m in messages) >= 0.25 * len(messages)
    assert {m["language"] for m in messages} == {"en", "es", "fr", "de", "pt"}
    test_share = sum(m["split"] == "test" for m in messages) / len(messages)
    assert 0.2 <= test_share <= 0.35


def test_rules_accuracy_on_the_labelled_set() -> None:
    messages = load_messages()
    correct = sum(classify_rules(m["text"]).kind == m["intent"] for m in messages)
    assert correct / len(messages) >= 0.75


async def test_accuracy_with_the_embedder_on_the_labelled_set(
    use: UseMultilingualEmbedder,
) -> None:
    classifier = IntentClassifier(use)
    messages = load_messages()
    hits = {"train": 0, "test": 0}
    for m in messages:
        hits[m["split"]] += (await classifier.classify(m["text"])).kind == m["intent"]
    assert sum(hits.values()) / len(messages) >= 0.85
    # the held-out messages, never tuned on (0.88 when written): keep them honest too
    assert hits["test"] / sum(m["split"] == "test" for m in messages) >= 0.8


def test_prefilter_never_skips_a_rule_that_matches() -> None:
    assert sum(rule.grams is None for rule in RULES) <= 3  # almost every rule has one
    texts = [_normal(m["text"]) for m in load_messages()]
    texts += [_normal(text) for text, _ in CLEAR]
    for text in texts:
        grams = _text_grams(text)
        for rule in RULES:
            if rule.grams is not None and rule.grams.isdisjoint(grams):
                assert rule.pattern.search(text) is None, (rule.pattern.pattern, text)
