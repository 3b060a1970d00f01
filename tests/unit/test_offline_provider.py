"""The offline provider: extractive, cited answers from the passages alone, streamed
word by word at a set rate, and a plain "I can't answer that" when they don't say."""

from __future__ import annotations

import time

import pytest

from fenlo_server.llm.offline import NO_ANSWER, NO_PASSAGES, OfflineProvider, compose_answer
from fenlo_server.llm.types import ChatMessage, LlmRequest, Passage, StreamOutcome

HOURS_TEXT = (
    "Our store opens at 9 am from Monday to Friday. On Saturdays we open at 10 am. "
    "We are closed on Sundays and public holidays."
)
RETURNS_TEXT = (
    "Returns are accepted within 30 days of purchase. Refunds go back to the original "
    "payment method. Shipping is free on orders over 50 euros."
)
HOURS = Passage(1, HOURS_TEXT, title="Opening hours", score=0.4)
RETURNS = Passage(2, RETURNS_TEXT, title="Returns", score=0.35)
WAREHOUSE = Passage(1, "The warehouse ships all orders every weekday before noon.")
WAREHOUSE_QUESTION = "When does the warehouse ship orders?"
WAREHOUSE_ANSWER = "The warehouse ships all orders every weekday before noon [1]."  # 10 words


def request(
    question: str, passages: tuple[Passage, ...], *, assistant_prefix: str = ""
) -> LlmRequest:
    messages = (
        ChatMessage("system", "You are the store's assistant."),
        ChatMessage("user", question),
    )
    return LlmRequest(messages, passages, assistant_prefix=assistant_prefix)


async def collect(
    provider: OfflineProvider, req: LlmRequest
) -> tuple[list[str], StreamOutcome, list[float]]:
    """The deltas, the outcome, and when each delta arrived (seconds from the call)."""
    outcome = StreamOutcome()
    deltas: list[str] = []
    times: list[float] = []
    started = time.monotonic()
    async for delta in provider.stream(req, None, outcome):
        deltas.append(delta)
        times.append(time.monotonic() - started)
    return deltas, outcome, times


def test_answers_with_the_matching_sentence_and_cites_its_passage() -> None:
    answer, cited = compose_answer("How many days do I have to return something?", (HOURS, RETURNS))
    assert answer == "Returns are accepted within 30 days of purchase [2]."
    assert cited == [2]


def test_answer_keeps_the_matching_sentences_in_document_order() -> None:
    answer, cited = compose_answer("When does the store open on Saturdays?", (HOURS, RETURNS))
    assert answer == (
        "Our store opens at 9 am from Monday to Friday. On Saturdays we open at 10 am [1]."
    )
    assert "Sundays" not in answer and "Returns" not in answer
    assert cited == [1]


@pytest.mark.parametrize("first", ["hours", "returns"])
def test_question_needing_two_passages_is_answered_from_both(first: str) -> None:
    passages = (HOURS, RETURNS) if first == "hours" else (RETURNS, HOURS)
    answer, cited = compose_answer("When do you open on Saturdays, and is shipping free?", passages)
    saturday = "On Saturdays we open at 10 am [1]."
    shipping = "Shipping is free on orders over 50 euros [2]."
    # Each passage cited once, after its sentences, in the order the passages came.
    expected = f"{saturday} {shipping}" if first == "hours" else f"{shipping} {saturday}"
    assert answer == expected
    assert cited == [1, 2]


async def test_question_the_passages_do_not_answer_gets_a_plain_no_and_no_citation() -> None:
    deltas, outcome, _ = await collect(
        OfflineProvider(), request("Do you sell gift cards?", (HOURS, RETURNS))
    )
    assert "".join(deltas) == NO_ANSWER
    assert "couldn't find the answer" in NO_ANSWER
    assert outcome.cited == []
    assert outcome.finished


async def test_no_passages_gets_a_plain_no_and_no_citation() -> None:
    deltas, outcome, _ = await collect(OfflineProvider(), request("When does the store open?", ()))
    assert "".join(deltas) == NO_PASSAGES
    assert "don't have any information" in NO_PASSAGES
    assert outcome.cited == []
    assert outcome.finished


def test_a_passage_without_text_is_not_quoted_however_high_its_score() -> None:
    empty = Passage(1, "  ", score=0.95)
    assert compose_answer("Do you sell gift cards?", (empty, RETURNS)) == (NO_ANSWER, [])
    assert compose_answer("Do you sell gift cards?", (empty,)) == (NO_ANSWER, [])


@pytest.mark.parametrize(
    ("question", "text", "expected"),
    [
        (  # the question has no umlaut and shouts; the passage has both
            "Wann sind die OFFNUNGSZEITEN?",
            "Parkplätze gibt es hinter dem Gebäude. Die Öffnungszeiten sind Montag bis "
            "Freitag von 8 bis 17 Uhr.",
            "Die Öffnungszeiten sind Montag bis Freitag von 8 bis 17 Uhr [1].",
        ),
        (
            "Gibt es PARKPLATZE?",
            "Parkplätze gibt es hinter dem Gebäude. Die Öffnungszeiten sind Montag bis "
            "Freitag von 8 bis 17 Uhr.",
            "Parkplätze gibt es hinter dem Gebäude [1].",
        ),
        (  # the question has the accent, in capitals; the passage has none
            "¿Cuál es el HORARIO de ATENCIÓN?",
            "Aceptamos tarjetas y efectivo. El horario de atencion es de lunes a viernes.",
            "El horario de atencion es de lunes a viernes [1].",
        ),
    ],
    ids=["german-hours", "german-parking", "spanish"],
)
def test_accents_and_case_are_folded(question: str, text: str, expected: str) -> None:
    # A low retrieval score: the words must match, not the score.
    answer, cited = compose_answer(question, (Passage(1, text, score=0.1),))
    assert (answer, cited) == (expected, [1])


def test_a_confident_retrieval_answers_a_question_in_another_language() -> None:
    question = "¿A qué hora abre la tienda?"  # no word in common with the passage
    sure = Passage(1, HOURS_TEXT, score=0.85)
    answer, cited = compose_answer(question, (RETURNS, sure))
    assert answer == (
        "Our store opens at 9 am from Monday to Friday. On Saturdays we open at 10 am [1]."
    )
    assert cited == [1]
    unsure = Passage(1, HOURS_TEXT, score=0.3)
    assert compose_answer(question, (RETURNS, unsure)) == (NO_ANSWER, [])


async def test_streams_word_by_word() -> None:
    deltas, outcome, _ = await collect(OfflineProvider(), request(WAREHOUSE_QUESTION, (WAREHOUSE,)))
    assert len(deltas) == 10
    assert "".join(deltas) == WAREHOUSE_ANSWER
    assert all(d.strip() and " " not in d.strip() for d in deltas)  # one word each
    assert outcome.cited == [1]


async def test_rate_paces_the_stream() -> None:
    deltas, _, times = await collect(
        OfflineProvider(tokens_per_second=20), request(WAREHOUSE_QUESTION, (WAREHOUSE,))
    )
    assert "".join(deltas) == WAREHOUSE_ANSWER
    assert times[0] < 0.15  # the first word at once, not after the whole answer
    assert 0.35 <= times[-1] <= 2.0  # ten words at 20 a second: ~0.45 s


async def test_rate_zero_is_near_instant() -> None:
    deltas, _, times = await collect(
        OfflineProvider(tokens_per_second=0), request(WAREHOUSE_QUESTION, (WAREHOUSE,))
    )
    assert len(deltas) == 10
    assert times[-1] < 0.1


@pytest.mark.parametrize("cut", [len("The warehouse ships"), len("The warehouse ships all or")])
async def test_continuation_of_its_own_answer_yields_only_the_rest(cut: int) -> None:
    prefix = WAREHOUSE_ANSWER[:cut]
    deltas, outcome, _ = await collect(
        OfflineProvider(),
        request(WAREHOUSE_QUESTION, (WAREHOUSE,), assistant_prefix=prefix),
    )
    assert deltas
    assert "".join(deltas) == WAREHOUSE_ANSWER[cut:]
    assert prefix + "".join(deltas) == WAREHOUSE_ANSWER
    assert outcome.finished
    assert outcome.cited == [1]


async def test_continuation_of_another_answer_starts_a_new_paragraph() -> None:
    prefix = "Orders placed before noon"
    deltas, _, _ = await collect(
        OfflineProvider(),
        request(WAREHOUSE_QUESTION, (WAREHOUSE,), assistant_prefix=prefix),
    )
    assert "".join(deltas) == "\n\n" + WAREHOUSE_ANSWER


async def test_outcome_reports_finished_and_estimated_usage() -> None:
    req = request(WAREHOUSE_QUESTION, (WAREHOUSE,))
    deltas, outcome, _ = await collect(OfflineProvider(), req)
    assert outcome.finished
    assert outcome.finish_reason == "stop"
    assert outcome.usage is not None
    assert outcome.usage.estimated
    # Words of the conversation (5 + 6) and of the passage (9); one token per word sent.
    assert outcome.usage.prompt_tokens == 5 + 6 + 9
    assert outcome.usage.completion_tokens == len(deltas) == 10
