"""SentimentAnalysis: the lexicon scorer per message and the conversation trend."""

from __future__ import annotations

import pytest

from fenlo_server.pipeline.analysis.sentiment import (
    NEGATIVE_AT,
    POSITIVE_AT,
    TREND_DECAY,
    analyze_sentiment,
    sentiment_trend,
)


def has_reason(text: str, prefix: str) -> bool:
    return any(r.startswith(prefix) for r in analyze_sentiment(text).reasons)


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I'm really happy with the cleaning, thank you!", "positive"),
        ("The service was terrible and the staff were rude.", "negative"),
        ("I'd like to book a table for two on Friday.", "neutral"),
        ("El servicio fue excelente, muchas gracias.", "positive"),
        ("Estoy muy decepcionado, el pedido llegó roto.", "negative"),
        ("Le personnel était très gentil, merci !", "positive"),
        ("C'est vraiment nul, je suis déçu.", "negative"),
        ("Das Team war super freundlich, danke!", "positive"),
        ("Die Lieferung war eine Katastrophe, sehr enttäuschend.", "negative"),
        ("O atendimento foi ótimo, obrigado!", "positive"),
        ("Que serviço péssimo, estou muito chateado.", "negative"),
        ("Wann haben Sie morgen geöffnet?", "neutral"),
    ],
)
def test_each_language(text: str, label: str) -> None:
    assert analyze_sentiment(text).label == label


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("I'm not happy with the service", "negated: not happy"),
        ("I don't like the new app", "negated: don't like"),
        ("No estoy contento con el resultado", "negated: no contento"),
        ("Je ne suis pas content", "negated: pas content"),
        ("Ich bin nicht zufrieden", "negated: nicht zufrieden"),
        ("Não estou satisfeito com o atendimento", "negated: não satisfeito"),
        ("Es gefällt mir nicht.", "negated: gefällt nicht"),
        ("J'aime pas du tout", "negated: aime pas"),
    ],
)
def test_negation_turns_praise_negative(text: str, reason: str) -> None:
    result = analyze_sentiment(text)
    assert result.label == "negative"
    assert reason in result.reasons


def test_negated_complaint_is_mildly_positive() -> None:
    for text in ("not bad at all", "Ce n'est pas mal", "nicht schlecht"):
        result = analyze_sentiment(text)
        assert 0 < result.score < analyze_sentiment("good").score, text


@pytest.mark.parametrize("text", ["Never again.", "Nunca más.", "Plus jamais.", "Nie wieder!"])
def test_never_again(text: str) -> None:
    assert analyze_sentiment(text).label == "negative"


def test_intensifiers_and_diminishers() -> None:
    plain = analyze_sentiment("The staff were friendly").score
    very = analyze_sentiment("The staff were very friendly")
    slightly = analyze_sentiment("The staff were slightly friendly").score
    assert slightly < plain < very.score
    assert "intensifier: very" in very.reasons
    assert has_reason("The staff were slightly rude", "diminisher: slightly")
    for weak, strong in [
        ("El servicio fue bueno", "El servicio fue muy bueno"),
        ("C'est bien", "C'est très bien"),
        ("Das war gut", "Das war sehr gut"),
        ("Foi bom", "Foi muito bom"),
    ]:
        assert analyze_sentiment(strong).score > analyze_sentiment(weak).score, strong


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The food was great but the service was terrible", "negative"),
        ("The wait was long but the dentist was amazing", "positive"),
        ("La comida estaba buena pero el servicio fue horrible", "negative"),
        ("C'était un peu long mais le résultat est parfait", "positive"),
        ("Das Essen war nicht gut, aber der Service war toll", "positive"),
        ("O preço é bom mas o atendimento foi péssimo", "negative"),
    ],
)
def test_the_clause_after_but_weighs_more(text: str, label: str) -> None:
    result = analyze_sentiment(text)
    assert result.label == label
    assert any(r.startswith("contrast: ") for r in result.reasons)


def test_portuguese_mais_is_not_but() -> None:
    assert not has_reason("Nunca recebi mais nada, foi bom", "contrast:")
    assert has_reason("C'est bien mais trop cher", "contrast: mais")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Great, another delay.", "sarcasm: great + delay"),
        ("Oh wonderful... not", "sarcasm: wonderful + ... not"),
        ("Perfect, my order is late again", "sarcasm: perfect + late"),
        ("Fantastic, the app crashed again.", "sarcasm: fantastic + crashed"),
        ("I love waiting 40 minutes on hold", "sarcasm: love + waiting"),
        ("Great service 🙄", "sarcasm: great + 🙄"),
        ("Genial, otra vez tarde.", "sarcasm: genial + otra vez"),
        ("Super, schon wieder eine Verspätung.", "sarcasm: super + verspatung"),
        ("J'adore attendre une heure", "sarcasm: adore + attendre"),
    ],
)
def test_sarcasm_turns_praise_negative(text: str, reason: str) -> None:
    result = analyze_sentiment(text)
    assert result.label == "negative"
    assert reason in result.reasons


@pytest.mark.parametrize(
    "text", ["Yeah right, like that's going to help", "Thanks for nothing", "Na toll."]
)
def test_sarcastic_phrases(text: str) -> None:
    result = analyze_sentiment(text)
    assert result.label == "negative"
    assert any(r.startswith("sarcasm cue: ") for r in result.reasons)


@pytest.mark.parametrize(
    "text",
    [
        "Perfect, thanks!",
        "Great, my issue was fixed, thanks",
        "Great, see you again!",
        "Great service, but a little slow",
    ],
)
def test_no_sarcasm_in_plain_praise(text: str) -> None:
    assert not has_reason(text, "sarcasm")


def test_mixed_message_is_neutral_unless_one_side_dominates() -> None:
    balanced = analyze_sentiment("The food was good and the service was bad")
    assert balanced.label == "neutral"
    assert any(r.startswith("mixed: ") for r in balanced.reasons)
    assert "positive: good" in balanced.reasons
    assert "negative: bad" in balanced.reasons
    dominated = analyze_sentiment("The room was nice but the staff were horrible and rude")
    assert dominated.label == "negative"
    assert any(r.startswith("mixed: ") for r in dominated.reasons)


def test_emoji_and_emoticons() -> None:
    assert analyze_sentiment("Love it 😍").label == "positive"
    assert analyze_sentiment("My order arrived 😡").label == "negative"
    assert analyze_sentiment("see you tomorrow :)").label == "positive"
    assert analyze_sentiment("still waiting :(").label == "negative"
    assert "emoji: 👍" in analyze_sentiment("ok 👍").reasons
    # a URL is not an emoticon
    assert analyze_sentiment("see https://example.com/help").reasons == ()


def test_emphasis_by_caps_and_exclamation() -> None:
    plain = analyze_sentiment("This is terrible").score
    caps = analyze_sentiment("This is TERRIBLE")
    assert caps.score < plain
    assert "caps: TERRIBLE" in caps.reasons
    assert analyze_sentiment("This is terrible!!!").score < plain
    assert "all caps" in analyze_sentiment("THIS IS THE WORST SERVICE EVER").reasons


def test_greetings_and_requests_are_neutral() -> None:
    for text in (
        "Buenos días",
        "Bonne journée",
        "Guten Tag, ich hätte eine Frage",
        "I'd like to book a check-up",
    ):
        assert analyze_sentiment(text).label == "neutral", text


def test_score_range_and_thresholds() -> None:
    for text in (
        "",
        "ok",
        "AMAZING!!! 😍😍😍 best ever, truly wonderful, love love love",
        "worst, awful, terrible, horrible, disgusting!!! 😡😡",
    ):
        result = analyze_sentiment(text)
        assert -1.0 <= result.score <= 1.0
        if not any(r.startswith("mixed") for r in result.reasons):
            expected = (
                "positive"
                if result.score >= POSITIVE_AT
                else "negative"
                if result.score <= NEGATIVE_AT
                else "neutral"
            )
            assert result.label == expected
    assert analyze_sentiment("").label == "neutral"


def test_trend_weighs_recent_turns_most() -> None:
    assert sentiment_trend([]) == 0.0
    assert sentiment_trend([0.4]) == 0.4
    assert sentiment_trend([0.5] * 10) == pytest.approx(0.5)
    improving = sentiment_trend([-0.8, -0.5, 0.6])
    worsening = sentiment_trend([0.6, -0.5, -0.8])
    assert improving > 0 > worsening
    # two turns: weights 1 (latest) and TREND_DECAY
    assert sentiment_trend([1.0, 0.0]) == pytest.approx(TREND_DECAY / (1 + TREND_DECAY), abs=1e-3)
    assert -1.0 <= sentiment_trend([-1.0] * 50) <= 1.0
