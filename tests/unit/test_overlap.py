"""OverlapTrimmer: after a mid-answer failover, the words the next provider repeats
of the text already sent are dropped, and nothing else is."""

from __future__ import annotations

import itertools
import random

import pytest

from fenlo_server.llm.overlap import WINDOW, OverlapTrimmer

SENT = "Our shop opens at 9 am on weekdays"


def feed_all(sent: str, deltas: list[str]) -> tuple[list[str], str]:
    """What the trimmer emits for each delta, and what it releases at the end."""
    trimmer = OverlapTrimmer(sent)
    emitted = [trimmer.feed(delta) for delta in deltas]
    return emitted, trimmer.flush()


def continued(sent: str, deltas: list[str]) -> str:
    emitted, rest = feed_all(sent, deltas)
    return sent + "".join(emitted) + rest


@pytest.mark.parametrize("lead", ["", " "], ids=["no-leading-space", "leading-space"])
def test_restatement_in_one_delta_is_trimmed_to_the_new_text(lead: str) -> None:
    emitted, rest = feed_all(SENT, [lead + "on weekdays and at 10 am on Saturdays."])
    assert emitted == [" and at 10 am on Saturdays."]
    assert rest == ""


@pytest.mark.parametrize("lead", ["", " "], ids=["no-leading-space", "leading-space"])
def test_restatement_split_over_deltas_is_held_then_trimmed(lead: str) -> None:
    deltas = [lead + "o", "n week", "days", " and", " at 10 am."]
    emitted, rest = feed_all(SENT, deltas)
    # Held while it could still be the tail; released the moment it is not.
    assert emitted == ["", "", "", " and", " at 10 am."]
    assert rest == ""
    assert continued(SENT, deltas) == SENT + " and at 10 am."


def test_restatement_of_more_words_is_trimmed() -> None:
    assert continued(SENT, ["Our shop opens at 9 am on weekdays, except holidays."]) == (
        SENT + ", except holidays."
    )


def test_text_without_overlap_passes_through_unchanged() -> None:
    deltas = ["Parking", " is free", " for customers."]
    emitted, rest = feed_all(SENT + ".", deltas)
    assert emitted == deltas  # "Parking" is not in the sent text: no reason to hold it
    assert rest == ""


def test_text_is_released_as_soon_as_it_cannot_be_a_restatement() -> None:
    # " " and " o" occur in the sent text (so might start a restatement), " on Sunday" does not.
    emitted, rest = feed_all(SENT + ".", [" ", "o", "n Sunday", " too."])
    assert emitted == ["", "", " on Sunday", " too."]
    assert rest == ""


@pytest.mark.parametrize("lead", ["", " "], ids=["no-leading-space", "leading-space"])
def test_short_coincidental_match_is_not_trimmed(lead: str) -> None:
    # "is" ends the sent text and starts the continuation, but two letters are a
    # coincidence, not a restatement (with or without the space before them).
    assert continued("The answer is", [lead + "is yes."]) == "The answer is" + lead + "is yes."
    assert continued("Take a", [lead + "a left turn."]) == "Take a" + lead + "a left turn."


@pytest.mark.parametrize(
    "deltas", [["carpet is new."], ["car", "pet is new."], ["ca", "r", "pet", " is new."]]
)
def test_partial_word_match_is_not_trimmed(deltas: list[str]) -> None:
    assert continued("I parked the car", deltas) == "I parked the carcarpet is new."


@pytest.mark.parametrize("deltas", [["carpet"], ["car", "pet"]])
def test_partial_word_match_of_the_whole_sent_text_is_not_trimmed(deltas: list[str]) -> None:
    # The continuation equals the whole sent text for a moment: the next character
    # decides whether that was a whole-word repeat, however the deltas are split.
    assert continued("car", deltas) == "carcarpet"
    assert continued("I parked the car", ["I parked the ", *deltas]) == (
        "I parked the carI parked the carpet"
    )


def test_match_starting_inside_a_sent_word_is_not_trimmed() -> None:
    assert continued("We sell carpet", ["pet food too."]) == "We sell carpetpet food too."


@pytest.mark.parametrize("lead", ["", " "], ids=["no-leading-space", "leading-space"])
def test_whole_sent_text_restated_is_trimmed(lead: str) -> None:
    deltas = [lead + "Hello", " there", ", how can I help?"]
    assert feed_all("Hello there", deltas) == (["", "", ", how can I help?"], "")


def test_repeat_of_a_tail_cut_inside_a_word_is_not_trimmed() -> None:
    sent = ("abcdefghij " * 30).strip()  # 329 characters: the 256-character tail starts mid-word
    tail = sent[-WINDOW:]
    assert tail[0].isalnum() and sent[-WINDOW - 1].isalnum()
    # Starting with a fragment of a word is not restating the text...
    assert continued(sent, [tail + " and more."]) == sent + tail + " and more."
    # ...starting at a word inside the tail is.
    assert continued(sent, ["abcdefghij abcdefghij and more."]) == sent + " and more."


def test_empty_sent_text_passes_everything_through() -> None:
    deltas = ["Hello", " there", "."]
    emitted, rest = feed_all("", deltas)
    assert emitted == deltas
    assert rest == ""


def test_flush_drops_a_continuation_that_was_only_a_restatement() -> None:
    emitted, rest = feed_all(SENT, ["on", " weekdays"])
    assert emitted == ["", ""]
    assert rest == ""


def test_flush_releases_held_text_that_was_not_a_restatement() -> None:
    # "shop opens" occurs in the sent text but not at its end: held, then released.
    emitted, rest = feed_all(SENT, ["shop", " opens"])
    assert emitted == ["", ""]
    assert rest == "shop opens"


def test_flush_after_a_decision_releases_nothing_twice() -> None:
    trimmer = OverlapTrimmer(SENT)
    assert trimmer.feed("weekdays and Saturdays.") == " and Saturdays."
    assert trimmer.flush() == ""
    assert trimmer.feed(" Bye.") == " Bye."
    assert trimmer.flush() == ""


# Property: random texts, a random repeated suffix of whole words, random splits.

VOCABULARY = (
    "a an is it to we the cat car carpet pet shop store open opens at 9 10 am pm "
    "on weekdays and or not yes no café über naïve straße résumé order orders "
    "ship shipping free returns refund 30 days , . ? ! : ;"
).split()


def _words(rng: random.Random, low: int, high: int) -> list[str]:
    return [rng.choice(VOCABULARY) for _ in range(rng.randint(low, high))]


def _ambiguous(sent_words: list[str], continuation_words: list[str], k: int) -> bool:
    """Whether more than the k repeated words of the continuation also end the sent
    text (then trimming more than the repeat would be right too)."""
    longest = min(len(sent_words), len(continuation_words))
    return any(sent_words[-j:] == continuation_words[:j] for j in range(k + 1, longest + 1))


def _random_splits(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 8)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def test_random_restatements_in_random_splits_yield_the_text_exactly_once() -> None:
    rng = random.Random(20240611)
    checked = trimmed = 0
    while checked < 2000:
        sent_words = _words(rng, 1, 70)  # up to ~400 characters: past the window at times
        new_words = _words(rng, 1, 8)
        k = rng.randint(0, min(len(sent_words), 8))
        if _ambiguous(sent_words, sent_words[len(sent_words) - k :] + new_words, k):
            continue
        sent = " ".join(sent_words)
        lead = rng.choice(["", " "]) if k else ""
        repeat = lead + " ".join(sent_words[len(sent_words) - k :]) if k else ""
        new = " " + " ".join(new_words)
        continuation = repeat + new
        is_repeat = len(repeat.strip()) >= 3  # shorter ones are coincidences, kept
        expected = sent + (new if is_repeat else continuation)
        cut = len(repeat) if is_repeat else 0

        trimmer = OverlapTrimmer(sent)
        emitted = ""
        fed = ""
        for delta in _random_splits(rng, continuation):
            fed += delta
            emitted += trimmer.feed(delta)
            if fed.lstrip() in sent[-WINDOW:]:
                assert emitted == "", (sent, fed)  # could still be a restatement: held
            else:
                # Undecided no longer: everything fed so far is out, minus the repeat.
                assert sent + emitted == expected[: len(sent) + len(fed) - cut], (sent, fed)
        emitted += trimmer.flush()
        assert sent + emitted == expected, (sent, continuation)
        checked += 1
        trimmed += is_repeat
    assert trimmed > 1000  # most cases did repeat words: the property is not vacuous
