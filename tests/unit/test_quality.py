"""QualityScorer: a grounded, cited, direct answer scores high; refusals, hedges, ungrounded
or badly sized answers score lower, and the parts and reasons say why."""

from __future__ import annotations

import pytest

from fenlo_server.llm.offline import NO_ANSWER, NO_PASSAGES, compose_answer
from fenlo_server.llm.types import Passage
from fenlo_server.pipeline.analysis.quality import WEIGHTS, score_quality
from fenlo_server.pipeline.analysis.types import Quality

HOURS = (
    "Our shop opens at 9:00 and closes at 18:00 from Monday to Friday. On Saturdays we "
    "open from 10:00 to 14:00. We are closed on Sundays and public holidays."
)
SHIPPING = (
    "Shipping within Spain takes 2 to 3 working days and costs 4.95 EUR. "
    "Orders over 50 EUR ship free of charge."
)
PASSAGES = (HOURS, SHIPPING)
GOOD = "Our shop opens at 9:00 and closes at 18:00 from Monday to Friday [1]."


def part(quality: Quality, name: str) -> float:
    return next(c.score for c in quality.components if c.name == name)


def names(quality: Quality) -> list[str]:
    return [c.name for c in quality.components]


def test_grounded_cited_direct_answer_scores_full_marks_with_every_part() -> None:
    quality = score_quality("What are your opening hours?", GOOD, passages=PASSAGES, cited=[1])
    assert quality.score == pytest.approx(1.0)
    assert names(quality) == list(WEIGHTS)
    assert quality.reasons == ()


def test_weights_sum_to_one_and_the_score_is_the_weighted_sum() -> None:
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    answer = "I think we probably open at 9, but I'm not sure."
    quality = score_quality("When do you open?", answer, passages=PASSAGES)
    assert sum(c.weight for c in quality.components) == pytest.approx(1.0, abs=1e-3)
    weighted = sum(c.score * c.weight for c in quality.components)
    assert quality.score == pytest.approx(weighted, abs=1e-3)


def test_without_passages_citations_and_grounding_are_left_out_not_penalised() -> None:
    quality = score_quality("What are your opening hours?", "We open at 9 am on weekdays.")
    assert names(quality) == ["length_fit", "question_overlap", "certainty"]
    assert sum(c.weight for c in quality.components) == pytest.approx(1.0, abs=1e-3)
    assert quality.score >= 0.85
    assert not any("citation" in r for r in quality.reasons)


def test_empty_answer_scores_zero_with_a_reason() -> None:
    for answer in ("", "   ", "…", "[1]"):
        quality = score_quality("What are your opening hours?", answer, passages=PASSAGES)
        assert quality.score == 0.0
        assert quality.reasons == ("empty answer",)


def test_interrupted_answer_is_scored_and_noted() -> None:
    whole = score_quality("What are your opening hours?", GOOD, passages=PASSAGES, cited=[1])
    cut = score_quality(
        "What are your opening hours?",
        "Our shop opens at 9:00 and closes",
        passages=PASSAGES,
        interrupted=True,
    )
    assert 0 < cut.score < whole.score
    assert "interrupted" in cut.reasons
    assert score_quality("Hours?", "", interrupted=True).reasons == ("empty answer", "interrupted")


# --- length_fit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Do you ship to Spain?", "Yes."),
        ("When do you open on Saturdays?", "At 10:00."),
        ("How much is shipping?", "4.95 EUR."),
        ("¿Abren los domingos?", "No."),
    ],
)
def test_short_factual_answers_fit(question: str, answer: str) -> None:
    assert part(score_quality(question, answer), "length_fit") == 1.0


@pytest.mark.parametrize(
    "question",
    [
        "How do I return an order?",
        "Why was my card declined?",
        "Can you explain the difference between the plans?",
        "¿Cómo puedo cambiar mi contraseña?",
        "Pourquoi ma commande est-elle en retard ?",
        "Wie funktioniert die Rücksendung?",
        "Qual é a diferença entre os planos?",
    ],
)
def test_explanations_need_more_than_a_word_or_two(question: str) -> None:
    quality = score_quality(question, "Online.")
    assert part(quality, "length_fit") < 0.5
    assert any(r.startswith("length_fit: too short") for r in quality.reasons)


def test_very_long_answers_lose_length_fit() -> None:
    rambling = " ".join(["We open at nine on weekdays and at ten on Saturdays."] * 40)
    quality = score_quality("When do you open?", rambling)
    assert part(quality, "length_fit") < 0.5
    assert any(r.startswith("length_fit: too long") for r in quality.reasons)
    assert score_quality("When do you open?", rambling[:600]).score > quality.score


# --- citation_use --------------------------------------------------------------------


def test_citing_a_retrieved_passage_counts_from_the_list_or_the_markers() -> None:
    question = "What are your opening hours?"
    assert part(score_quality(question, GOOD, passages=PASSAGES, cited=[1]), "citation_use") == 1
    assert part(score_quality(question, GOOD, passages=PASSAGES), "citation_use") == 1


def test_no_citation_with_passages_scores_zero_with_a_reason() -> None:
    uncited = GOOD.replace(" [1]", "")
    quality = score_quality("What are your opening hours?", uncited, passages=PASSAGES)
    assert part(quality, "citation_use") == 0.0
    assert "citation_use: no citation although passages were retrieved" in quality.reasons


def test_citing_a_passage_that_does_not_exist_is_penalised() -> None:
    quality = score_quality("What are your opening hours?", GOOD, passages=PASSAGES, cited=[1, 7])
    assert part(quality, "citation_use") == 0.5
    only_bad = score_quality(
        "What are your opening hours?", GOOD.replace("[1]", "[9]"), passages=PASSAGES
    )
    assert part(only_bad, "citation_use") == 0.0
    assert "citation_use: cites a passage that does not exist" in only_bad.reasons


# --- passage_overlap (grounding) -----------------------------------------------------


def test_grounded_answer_beats_an_invented_one() -> None:
    invented = "Our boutique welcomes visitors around the clock, including holidays [1]."
    grounded = score_quality("What are your opening hours?", GOOD, passages=PASSAGES, cited=[1])
    made_up = score_quality("What are your opening hours?", invented, passages=PASSAGES, cited=[1])
    assert part(grounded, "passage_overlap") == 1.0
    assert part(made_up, "passage_overlap") < 0.5
    assert any(r.startswith("passage_overlap:") for r in made_up.reasons)
    assert made_up.score < grounded.score


def test_grounding_ignores_case_accents_and_citation_markers() -> None:
    passage = "La tienda abre a las 9:00 de lunes a viernes. Los sábados abrimos a las 10:00."
    answer = "Los SABADOS abrimos a las 10:00 [1]."
    quality = score_quality("¿A qué hora abren los sábados?", answer, passages=[passage])
    assert part(quality, "passage_overlap") == 1.0


def test_one_word_answers_are_not_judged_ungrounded_outright() -> None:
    quality = score_quality("Do you ship to Spain?", "Yes.", passages=PASSAGES)
    assert part(quality, "passage_overlap") == 0.5


# --- question_overlap ----------------------------------------------------------------


def test_answering_something_else_loses_question_overlap() -> None:
    off_topic = (
        "Shipping within Spain takes 2 to 3 working days and costs 4.95 EUR, and orders "
        "over 50 EUR ship free of charge, which many customers appreciate [2]."
    )
    quality = score_quality(
        "What are your opening hours on public holidays?", off_topic, passages=PASSAGES
    )
    assert part(quality, "question_overlap") < 0.5
    assert "question_overlap: shares little with the question" in quality.reasons


def test_question_without_content_words_leaves_question_overlap_out() -> None:
    assert "question_overlap" not in names(score_quality("?", "Hello! How can I help?"))


# --- certainty -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "refusal",
    [
        "I don't know.",
        "I'm sorry, I can't help with that.",
        "I couldn't find that in the information I have.",
        "I do not have any information about that.",
        "Lo siento, no tengo información sobre eso.",
        "No lo sé.",
        "No pude encontrar esa información.",
        "Je ne sais pas.",
        "Désolé, je n'ai pas trouvé cette information.",
        "Ich weiß es nicht.",
        "Leider konnte ich dazu nichts finden.",
        "Tut mir leid, ich habe keine Informationen dazu.",
        "Não sei.",
        "Desculpe, não encontrei essa informação.",
        NO_ANSWER,
        NO_PASSAGES,
    ],
)
def test_refusals_score_low_in_every_language(refusal: str) -> None:
    quality = score_quality("What are your opening hours?", refusal, passages=PASSAGES)
    assert part(quality, "certainty") == 0.0
    assert "certainty: refuses" in quality.reasons
    assert quality.score < 0.35
    assert score_quality("What are your opening hours?", refusal).score < 0.35


def test_a_refusal_that_echoes_the_question_still_answers_nothing() -> None:
    echo = "I couldn't find your opening hours on public holidays."
    quality = score_quality("What are your opening hours on public holidays?", echo)
    assert part(quality, "question_overlap") == 0.0
    assert quality.score < 0.35


def test_a_partial_refusal_keeps_what_it_does_answer() -> None:
    partial = (
        "I couldn't find the holiday hours, but from Monday to Friday the shop opens at "
        "9:00 and closes at 18:00 [1]."
    )
    quality = score_quality("What are your opening hours?", partial, passages=PASSAGES, cited=[1])
    assert part(quality, "certainty") == 0.5
    assert part(quality, "passage_overlap") == 1.0
    assert quality.score > 0.8


@pytest.mark.parametrize(
    "hedged",
    [
        "I think we probably open at 9:00, but I'm not sure [1].",
        "Creo que abrimos a las 9:00, pero no estoy seguro, quizás a las 10:00 [1].",
        "Je pense que nous ouvrons peut-être à 9:00, probablement [1].",
        "Ich glaube, wir öffnen vielleicht um 9:00, wahrscheinlich [1].",
        "Acho que abrimos talvez às 9:00, provavelmente [1].",
    ],
)
def test_hedges_lower_certainty_in_every_language(hedged: str) -> None:
    quality = score_quality("When do you open?", hedged, passages=PASSAGES, cited=[1])
    assert part(quality, "certainty") <= 0.4
    assert any(r.startswith("certainty: hedged") for r in quality.reasons)


def test_one_hedge_costs_less_than_three() -> None:
    one = score_quality("When do you open?", "We probably open at 9:00.")
    three = score_quality("When do you open?", "I think we probably open at 9:00, maybe.")
    assert part(one, "certainty") == pytest.approx(0.8)
    assert part(three, "certainty") == pytest.approx(0.4)
    assert one.reasons == ()  # 0.8 is not a low part


# --- with the offline provider -------------------------------------------------------


def test_offline_provider_answers_score_high_and_its_refusals_low() -> None:
    passages = tuple(Passage(i + 1, text) for i, text in enumerate(PASSAGES))
    answer, cited = compose_answer("When do you open on Saturdays?", passages)
    good = score_quality("When do you open on Saturdays?", answer, passages=PASSAGES, cited=cited)
    assert good.score >= 0.8, (answer, good)
    refusal, none_cited = compose_answer("Do you sell gift cards?", passages)
    bad = score_quality("Do you sell gift cards?", refusal, passages=PASSAGES, cited=none_cited)
    assert bad.score < 0.35


# --- determinism and speed -----------------------------------------------------------


def test_deterministic() -> None:
    args = ("What are your opening hours?", GOOD)
    first = score_quality(*args, passages=PASSAGES, cited=[1])
    assert all(score_quality(*args, passages=PASSAGES, cited=[1]) == first for _ in range(5))


def test_scores_stay_within_bounds() -> None:
    for answer in (GOOD, NO_ANSWER, "x", "Yes.", "maybe " * 300):
        quality = score_quality("When?", answer, passages=PASSAGES, cited=[1, 2, 3])
        assert 0.0 <= quality.score <= 1.0
        assert all(0.0 <= c.score <= 1.0 for c in quality.components)
