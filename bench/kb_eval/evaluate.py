"""Retrieval evaluation for Fenlo's knowledge base, independent of how retrieval is done.

The evaluation set is a small knowledge base for one fictional business (Harbour Dental
Clinic) in ``docs/`` and a list of questions in ``questions.jsonl``. A retriever is any async
callable that takes a question and returns hits, best first::

    async def my_retriever(question: str) -> list[Hit]: ...

    report = await evaluate(my_retriever, load_questions(), k=5)
    print(report.to_markdown())

Metrics per question (answerable questions only):

* ``rank``: 1-based position of the first hit whose ``source`` is one of the question's
  ``sources`` (compared by file name, so "docs/faq.txt" matches "faq.txt"), searched over every
  hit returned; ``None`` if no hit matches.
* ``hit@1``, ``hit@k``: ``rank`` is 1, or at most ``k``.
* ``reciprocal rank`` (MRR@k): ``1 / rank`` when ``rank <= k``, else 0.
* ``answer in top k``: every fact of the question occurs in the concatenated text of the top
  ``k`` hits (case-insensitive, whitespace-normalised); for ``multi_document`` questions every
  source must also appear among the top ``k`` hits. For other kinds, several ``sources`` are
  alternatives (each holds the answer); for ``multi_document`` all are needed.

Unanswerable questions are left out of these averages; for them the report shows the top
score, next to the top scores of answerable questions, so a "no answer" threshold can be
chosen.

Command line (run from anywhere)::

    python bench/kb_eval/evaluate.py --validate          # check the data set, exit 1 on problems
    python bench/kb_eval/evaluate.py --selftest          # metrics on a naive keyword retriever
    python bench/kb_eval/evaluate.py --retriever pkg.mod:factory [--k 5] [--json out.json]

``--retriever`` imports ``factory`` (a dotted attribute path is fine): either a retriever
itself or a zero-argument callable (sync or async) that returns one. For example
``--retriever evaluate:KeywordRetriever.from_docs`` evaluates the self-test baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import math
import re
import statistics
import sys
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar
from xml.etree import ElementTree

HERE = Path(__file__).resolve().parent
DOCS_DIR = HERE / "docs"
QUESTIONS_PATH = HERE / "questions.jsonl"

KINDS = ("direct", "paraphrase", "other_language", "multi_document", "unanswerable")
LANGUAGES = ("en", "es", "fr", "de")
FIELDS = ("id", "question", "kind", "language", "sources", "facts")

# The mix the data set must keep (targets are ~15/15/12/10/8 of >= 60).
MIN_QUESTIONS = 60
MIN_PER_KIND = {
    "direct": 12,
    "paraphrase": 12,
    "other_language": 10,
    "multi_document": 8,
    "unanswerable": 6,
}
MIN_PER_OTHER_LANGUAGE = 3  # each of es, fr, de among other_language questions
DOC_WORDS = (300, 1500)


# ---------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved passage. ``source`` is the document's file name, e.g. "policies.pdf";
    ``text`` is the passage with whatever context the retriever adds (headings, section)."""

    source: str
    text: str
    score: float


Retriever = Callable[[str], Awaitable[list[Hit]]]


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    question: str
    kind: str
    language: str
    sources: tuple[str, ...]
    facts: tuple[str, ...]

    @property
    def answerable(self) -> bool:
        return self.kind != "unanswerable"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Question:
        return cls(
            id=d["id"],
            question=d["question"],
            kind=d["kind"],
            language=d["language"],
            sources=tuple(d["sources"]),
            facts=tuple(d["facts"]),
        )


def load_questions(path: Path | str = QUESTIONS_PATH) -> list[Question]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(Question.from_dict(json.loads(line)))
    return out


# ---------------------------------------------------------------------------- text helpers

_TRANSLATE = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "-",
        "\u2212": "-",
        "\u00a0": " ",
        "\u202f": " ",
    }
)


def normalise(text: str) -> str:
    """Case-folded, NFKC, typographic quotes and dashes made plain, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE).casefold()
    return " ".join(text.split())


def contains(text: str, fact: str) -> bool:
    return normalise(fact) in normalise(text)


def source_name(source: str) -> str:
    return Path(source.replace("\\", "/")).name


# ---------------------------------------------------------------------------- extraction
#
# What a reader of each document sees, as blocks under their heading path. Used to check
# that facts are in the documents, and by the self-test retriever. HTML boilerplate is left
# out: if the page has a <main>, only <main> is read; scripts, styles and forms never are.


@dataclass(frozen=True, slots=True)
class Block:
    headings: tuple[str, ...]
    text: str


def _md_inline(text: str) -> str:
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__|`)", "", text)
    return re.sub(r"(?<!\w)[*_](\S(?:.*?\S)?)[*_](?!\w)", r"\1", text)


def _markdown_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    path: list[str] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            blocks.append(Block(tuple(path), " ".join(buf)))
            buf.clear()

    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            flush()
            level = len(m.group(1))
            del path[level - 1 :]
            path.extend([""] * (level - 1 - len(path)))
            path.append(_md_inline(m.group(2)).strip())
        elif not line:
            flush()
        elif line.startswith("|"):
            flush()
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(re.fullmatch(r":?-{2,}:?", c) for c in cells if c):
                continue
            blocks.append(Block(tuple(path), " | ".join(_md_inline(c) for c in cells)))
        elif re.match(r"^([-*+]|\d+[.)])\s+", line):
            flush()
            buf.append(_md_inline(re.sub(r"^([-*+]|\d+[.)])\s+", "", line)))
        else:
            buf.append(_md_inline(line))
    flush()
    return [b for b in blocks if b.text]


def _text_blocks(text: str) -> list[Block]:
    paras = re.split(r"\n\s*\n", text)
    return [Block((), " ".join(p.split())) for p in paras if p.strip()]


class _HTMLBlocks(HTMLParser):
    SKIP: ClassVar[set[str]] = {
        "script",
        "style",
        "noscript",
        "template",
        "head",
        "form",
        "svg",
        "button",
    }
    BLOCK: ClassVar[set[str]] = {
        "p",
        "li",
        "dt",
        "dd",
        "tr",
        "address",
        "blockquote",
        "pre",
        "figcaption",
        "caption",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "nav",
        "aside",
        "main",
        "ul",
        "ol",
        "table",
        "thead",
        "tbody",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "title",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_depth = 0
        self.main_depth = 0
        self.saw_main = False
        self.blocks: list[tuple[bool, tuple[str, ...], str]] = []  # (inside main, path, text)
        self.path: list[str] = []
        self.buf: list[str] = []
        self.heading: int | None = None

    def _flush(self) -> None:
        text = " ".join("".join(self.buf).split())
        self.buf.clear()
        if not text:
            return
        if self.heading is not None:
            del self.path[self.heading - 1 :]
            self.path.extend([""] * (self.heading - 1 - len(self.path)))
            self.path.append(text)
        else:
            self.blocks.append((self.main_depth > 0, tuple(self.path), text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip_depth += 1
            return
        if tag == "main":
            self.main_depth += 1
            self.saw_main = True
        if tag in self.BLOCK:
            self._flush()
            if re.fullmatch(r"h[1-6]", tag):
                self.heading = int(tag[1])
        elif tag in ("td", "th") and self.buf and "".join(self.buf).strip():
            self.buf.append(" | ")
        elif tag == "br":
            self.buf.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if tag in self.BLOCK:
            self._flush()
            if re.fullmatch(r"h[1-6]", tag):
                self.heading = None
        if tag == "main":
            self.main_depth = max(0, self.main_depth - 1)

    def handle_data(self, data: str) -> None:
        if not self.skip_depth:
            self.buf.append(data)


def _html_blocks(text: str) -> list[Block]:
    parser = _HTMLBlocks()
    parser.feed(text)
    parser.close()
    parser._flush()
    keep = [(m, p, t) for m, p, t in parser.blocks if m or not parser.saw_main]
    return [Block(p, t) for _, p, t in keep]


def _pdf_blocks(path: Path) -> list[Block]:
    from pypdf import PdfReader  # only needed for PDFs

    reader = PdfReader(str(path))
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    # A PDF has lines, not paragraphs: pack sentences into passages of about 80 words.
    sentences = re.split(r"(?<=[.;:!?])\s+", " ".join(text.split()))
    blocks: list[Block] = []
    buf: list[str] = []
    for sentence in sentences:
        buf.append(sentence)
        if sum(len(s.split()) for s in buf) >= 80:
            blocks.append(Block((), " ".join(buf)))
            buf = []
    if buf:
        blocks.append(Block((), " ".join(buf)))
    return blocks


_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _docx_paragraph(p: ElementTree.Element) -> str:
    parts = []
    for el in p.iter():
        if el.tag == _W + "t":
            parts.append(el.text or "")
        elif el.tag == _W + "tab":
            parts.append("\t")
        elif el.tag in (_W + "br", _W + "cr"):
            parts.append(" ")
    return " ".join("".join(parts).split())


def _docx_blocks(path: Path) -> list[Block]:
    with zipfile.ZipFile(path) as zf:
        root = ElementTree.fromstring(zf.read("word/document.xml"))
    body = root.find(_W + "body")
    blocks: list[Block] = []
    headings: list[str] = []
    for el in body if body is not None else []:
        if el.tag == _W + "p":
            text = _docx_paragraph(el)
            style = el.find(f"{_W}pPr/{_W}pStyle")
            style_id = style.get(_W + "val", "") if style is not None else ""
            m = re.fullmatch(r"Heading(\d)", style_id)
            if m and text:
                level = int(m.group(1))
                del headings[level - 1 :]
                headings.extend([""] * (level - 1 - len(headings)))
                headings.append(text)
            elif text:
                blocks.append(Block(tuple(headings), text))
        elif el.tag == _W + "tbl":
            for tr in el.iter(_W + "tr"):
                cells = [
                    " ".join(_docx_paragraph(p) for p in tc.iter(_W + "p"))
                    for tc in tr.iter(_W + "tc")
                ]
                blocks.append(Block(tuple(headings), " | ".join(cells)))
    return blocks


def document_blocks(path: Path | str) -> list[Block]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf_blocks(path)
    if suffix == ".docx":
        return _docx_blocks(path)
    text = path.read_text(encoding="utf-8")
    if suffix in (".html", ".htm"):
        return _html_blocks(text)
    if suffix in (".md", ".markdown"):
        return _markdown_blocks(text)
    return _text_blocks(text)


def document_text(path: Path | str) -> str:
    """The document's text as a reader sees it: headings and blocks, one per line."""
    lines: list[str] = []
    seen: tuple[str, ...] = ()
    for block in document_blocks(path):
        for i, h in enumerate(block.headings):
            if h and (i >= len(seen) or seen[: i + 1] != block.headings[: i + 1]):
                lines.append(h)
        seen = block.headings
        lines.append(block.text)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- validation


def validate_dataset(
    questions_path: Path | str = QUESTIONS_PATH, docs_dir: Path | str = DOCS_DIR
) -> list[str]:
    """Every problem with the data set, as readable lines; an empty list means it is valid."""
    docs_dir = Path(docs_dir)
    problems: list[str] = []
    texts: dict[str, str] = {}

    def doc(name: str) -> str | None:
        if name not in texts:
            path = docs_dir / name
            if not path.is_file():
                return None
            try:
                texts[name] = document_text(path)
            except Exception as exc:
                problems.append(f"{name}: cannot extract text: {exc!r}")
                texts[name] = ""
        return texts[name]

    if not docs_dir.is_dir():
        return [f"docs directory {docs_dir} does not exist"]
    for path in sorted(docs_dir.iterdir()):
        if path.is_file():
            text = doc(path.name) or ""
            words = len(text.split())
            if not DOC_WORDS[0] <= words <= DOC_WORDS[1]:
                low, high = DOC_WORDS
                problems.append(f"{path.name}: {words} words, outside {low}-{high}")

    try:
        lines = Path(questions_path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        return [*problems, f"cannot read {questions_path}: {exc}"]

    ids: Counter[str] = Counter()
    question_texts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    other_languages: Counter[str] = Counter()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON: {exc}")
            continue
        if not isinstance(d, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        if set(d) != set(FIELDS):
            problems.append(f"{where}: fields {sorted(d)} != {sorted(FIELDS)}")
            continue
        where = f"line {n} ({d['id']})"
        bad = [
            f
            for f in ("id", "question", "kind", "language")
            if not isinstance(d[f], str) or not d[f].strip()
        ] + [
            f
            for f in ("sources", "facts")
            if not isinstance(d[f], list) or not all(isinstance(x, str) and x.strip() for x in d[f])
        ]
        if bad:
            problems.append(f"{where}: bad value for {', '.join(bad)}")
            continue
        q = Question.from_dict(d)
        ids[q.id] += 1
        question_texts[normalise(q.question)] += 1
        kinds[q.kind] += 1
        if q.kind not in KINDS:
            problems.append(f"{where}: kind {q.kind!r} not in {KINDS}")
        if q.language not in LANGUAGES:
            problems.append(f"{where}: language {q.language!r} not in {LANGUAGES}")
        if q.kind == "other_language":
            if q.language == "en":
                problems.append(f"{where}: other_language question in English")
            else:
                other_languages[q.language] += 1
        if q.kind in ("direct", "paraphrase") and q.language != "en":
            problems.append(f"{where}: {q.kind} question should be in English")
        if len(set(q.sources)) != len(q.sources) or len(set(q.facts)) != len(q.facts):
            problems.append(f"{where}: repeated source or fact")

        if q.kind == "unanswerable":
            if q.sources or q.facts:
                problems.append(f"{where}: unanswerable question with sources or facts")
            continue
        if not q.sources or not q.facts:
            problems.append(f"{where}: answerable question needs sources and facts")
            continue
        if q.kind == "multi_document" and len(set(q.sources)) < 2:
            problems.append(f"{where}: multi_document question needs two or more sources")

        source_texts = {}
        for s in q.sources:
            text = doc(s)
            if text is None:
                problems.append(f"{where}: source {s!r} not found in {docs_dir}")
            else:
                source_texts[s] = text
        if len(source_texts) != len(q.sources):
            continue
        for fact in q.facts:
            if not any(contains(t, fact) for t in source_texts.values()):
                problems.append(f"{where}: fact {fact!r} not found in {', '.join(q.sources)}")
        if q.kind == "multi_document":
            for s, t in source_texts.items():
                if not any(contains(t, f) for f in q.facts):
                    problems.append(f"{where}: no fact of the question is in source {s!r}")

    for qid, count in ids.items():
        if count > 1:
            problems.append(f"id {qid!r} used {count} times")
    for text, count in question_texts.items():
        if count > 1:
            problems.append(f"question {text!r} asked {count} times")
    total = sum(kinds.values())
    if total < MIN_QUESTIONS:
        problems.append(f"{total} questions, need at least {MIN_QUESTIONS}")
    for kind, minimum in MIN_PER_KIND.items():
        if kinds[kind] < minimum:
            problems.append(f"{kinds[kind]} {kind} questions, need at least {minimum}")
    for lang in LANGUAGES[1:]:
        if other_languages[lang] < MIN_PER_OTHER_LANGUAGE:
            problems.append(
                f"{other_languages[lang]} other_language questions in {lang!r}, "
                f"need at least {MIN_PER_OTHER_LANGUAGE}"
            )
    return problems


# ---------------------------------------------------------------------------- metrics


@dataclass(slots=True)
class QuestionResult:
    id: str
    kind: str
    language: str
    question: str
    sources: list[str]
    top_sources: list[str]  # sources of the top k hits, best first
    top_score: float | None  # score of the best hit, None when nothing was returned
    latency_ms: float
    rank: int | None = None  # first hit from an expected source, 1-based, over all hits
    hit_at_1: bool = False
    hit_at_k: bool = False
    reciprocal_rank: float = 0.0
    answer_in_top_k: bool = False
    missing_facts: list[str] = field(default_factory=list)
    missing_sources: list[str] = field(default_factory=list)  # multi_document only

    @property
    def answerable(self) -> bool:
        return self.kind != "unanswerable"


@dataclass(frozen=True, slots=True)
class Summary:
    group: str
    questions: int
    hit_at_1: float
    hit_at_k: float
    mrr: float
    answer_in_top_k: float
    mean_top_score: float
    mean_latency_ms: float


def _summarise(group: str, results: Sequence[QuestionResult]) -> Summary:
    n = len(results)

    def mean(values: Iterable[float]) -> float:
        values = list(values)
        return sum(values) / len(values) if values else 0.0

    return Summary(
        group=group,
        questions=n,
        hit_at_1=mean(r.hit_at_1 for r in results),
        hit_at_k=mean(r.hit_at_k for r in results),
        mrr=mean(r.reciprocal_rank for r in results),
        answer_in_top_k=mean(r.answer_in_top_k for r in results),
        mean_top_score=mean(r.top_score or 0.0 for r in results),
        mean_latency_ms=mean(r.latency_ms for r in results),
    )


@dataclass(frozen=True, slots=True)
class Threshold:
    """Refuse to answer when the top score is below ``value``."""

    value: float
    unanswerable_rejected: float  # share of unanswerable questions refused
    answerable_kept: float  # share of answerable questions still answered
    balanced_accuracy: float


def _thresholds(results: Sequence[QuestionResult]) -> list[Threshold]:
    pos = [r.top_score or 0.0 for r in results if r.answerable]
    neg = [r.top_score or 0.0 for r in results if not r.answerable]
    if not pos or not neg:
        return []
    candidates = sorted({*pos, *neg, math.inf})
    out = []
    for t in candidates:
        kept = sum(s >= t for s in pos) / len(pos)
        rejected = sum(s < t for s in neg) / len(neg)
        out.append(Threshold(t, rejected, kept, (kept + rejected) / 2))
    return out


@dataclass(slots=True)
class Report:
    k: int
    results: list[QuestionResult]
    name: str = "retriever"

    @property
    def answerable(self) -> list[QuestionResult]:
        return [r for r in self.results if r.answerable]

    @property
    def unanswerable(self) -> list[QuestionResult]:
        return [r for r in self.results if not r.answerable]

    @property
    def overall(self) -> Summary:
        return _summarise("overall", self.answerable)

    def by(self, attr: str) -> list[Summary]:
        groups: dict[str, list[QuestionResult]] = {}
        for r in self.answerable:
            groups.setdefault(getattr(r, attr), []).append(r)
        order = KINDS if attr == "kind" else LANGUAGES
        keys = sorted(groups, key=lambda g: (order.index(g) if g in order else len(order), g))
        return [_summarise(g, groups[g]) for g in keys]

    @property
    def best_threshold(self) -> Threshold | None:
        ts = _thresholds(self.results)
        # Ties: prefer the lowest threshold (refuse as little as possible).
        return max(ts, key=lambda t: (t.balanced_accuracy, -t.value)) if ts else None

    def score_distribution(self) -> dict[str, dict[str, float]]:
        def stats(values: list[float]) -> dict[str, float]:
            if not values:
                return {}
            values = sorted(values)
            return {
                "min": values[0],
                "p10": values[int(0.1 * (len(values) - 1))],
                "median": statistics.median(values),
                "max": values[-1],
            }

        return {
            "answerable": stats([r.top_score or 0.0 for r in self.answerable]),
            "unanswerable": stats([r.top_score or 0.0 for r in self.unanswerable]),
        }

    # ----------------------------------------------------------------- output

    def to_dict(self) -> dict[str, Any]:
        best = self.best_threshold
        return {
            "name": self.name,
            "k": self.k,
            "overall": asdict(self.overall),
            "by_kind": [asdict(s) for s in self.by("kind")],
            "by_language": [asdict(s) for s in self.by("language")],
            "unanswerable": {
                "top_scores": {r.id: r.top_score for r in self.unanswerable},
                "score_distribution": self.score_distribution(),
                "best_threshold": None
                if best is None
                else {**asdict(best), "value": None if math.isinf(best.value) else best.value},
            },
            "questions": [asdict(r) for r in self.results],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def to_markdown(self, details: bool = True) -> str:
        k = self.k
        head = (
            f"| group | n | hit@1 | hit@{k} | MRR@{k} | answer in top {k} | mean top score "
            f"| mean latency ms |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        )

        def row(s: Summary) -> str:
            return (
                f"| {s.group} | {s.questions} | {s.hit_at_1:.3f} | {s.hit_at_k:.3f} | {s.mrr:.3f} "
                f"| {s.answer_in_top_k:.3f} | {s.mean_top_score:.3f} | {s.mean_latency_ms:.1f} |"
            )

        out = [f"# Retrieval evaluation: {self.name}", ""]
        out.append(
            f"{len(self.answerable)} answerable and {len(self.unanswerable)} unanswerable "
            f"questions, k = {k}. Unanswerable questions are not in the hit/MRR averages."
        )
        out += ["", "## Overall", "", head, row(self.overall)]
        out += ["", "## By kind", "", head, *(row(s) for s in self.by("kind"))]
        out += ["", "## By language", "", head, *(row(s) for s in self.by("language"))]

        out += ["", "## Unanswerable questions: top score", ""]
        out += ["| id | language | top score | top source | question |", "|---|---|---:|---|---|"]
        for r in self.unanswerable:
            top = r.top_sources[0] if r.top_sources else "-"
            score = "-" if r.top_score is None else f"{r.top_score:.3f}"
            out.append(f"| {r.id} | {r.language} | {score} | {top} | {_cell(r.question)} |")
        dist = self.score_distribution()
        out += ["", "| top score of | min | p10 | median | max |", "|---|---:|---:|---:|---:|"]
        for name, st in dist.items():
            if st:
                out.append(
                    f"| {name} | {st['min']:.3f} | {st['p10']:.3f} | {st['median']:.3f} "
                    f"| {st['max']:.3f} |"
                )
        best = self.best_threshold
        if best is not None:
            value = "never answer" if math.isinf(best.value) else f"{best.value:.3f}"
            out += [
                "",
                f"Best single threshold (refuse when top score < t): t = {value}, "
                f"rejects {best.unanswerable_rejected:.0%} of unanswerable and keeps "
                f"{best.answerable_kept:.0%} of answerable questions "
                f"(balanced accuracy {best.balanced_accuracy:.3f}).",
            ]

        if details:
            out += ["", "## Answerable questions", ""]
            out += [
                f"| id | kind | lang | rank | answer in top {k} | missing | top sources |",
                "|---|---|---|---:|---|---|---|",
            ]
            for r in self.answerable:
                missing = [*r.missing_facts, *(f"source:{s}" for s in r.missing_sources)]
                out.append(
                    f"| {r.id} | {r.kind} | {r.language} | {r.rank or '-'} "
                    f"| {'yes' if r.answer_in_top_k else 'no'} | {_cell(', '.join(missing))} "
                    f"| {_cell(', '.join(r.top_sources))} |"
                )
        return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def score_question(q: Question, hits: Sequence[Hit], k: int, latency_ms: float) -> QuestionResult:
    names = [source_name(h.source) for h in hits]
    top = list(hits[:k])
    result = QuestionResult(
        id=q.id,
        kind=q.kind,
        language=q.language,
        question=q.question,
        sources=list(q.sources),
        top_sources=names[:k],
        top_score=hits[0].score if hits else None,
        latency_ms=latency_ms,
    )
    if not q.answerable:
        return result
    wanted = {source_name(s) for s in q.sources}
    result.rank = next((i for i, n in enumerate(names, 1) if n in wanted), None)
    result.hit_at_1 = result.rank == 1
    result.hit_at_k = result.rank is not None and result.rank <= k
    result.reciprocal_rank = 1.0 / result.rank if result.hit_at_k and result.rank else 0.0
    joined = "\n".join(h.text for h in top)
    result.missing_facts = [f for f in q.facts if not contains(joined, f)]
    if q.kind == "multi_document":
        result.missing_sources = sorted(wanted - set(names[:k]))
    result.answer_in_top_k = not result.missing_facts and not result.missing_sources
    return result


async def evaluate(
    retriever: Retriever,
    questions: Sequence[Question],
    k: int = 5,
    *,
    concurrency: int = 4,
    name: str = "retriever",
) -> Report:
    """Ask every question and score the hits; at most ``concurrency`` questions in flight.

    Hits must come best first; their order is used as given. Scores are only used for the
    unanswerable-question analysis, which assumes that a higher score means a better match.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(q: Question) -> QuestionResult:
        async with gate:
            started = time.perf_counter()
            hits = await retriever(q.question)
            latency = (time.perf_counter() - started) * 1000
        return score_question(q, hits, k, latency)  # hits are taken in the order given

    results = await asyncio.gather(*(one(q) for q in questions))
    return Report(k=k, results=list(results), name=name)


# ---------------------------------------------------------------------------- self-test

_STOP = set(
    """a about after again all also am an and any are as at be been before being but by can
    could did do does doing for from get got had has have how i if in into is it its just
    me my of on or our should so than that the their them then there these they this those
    to up us was we were what when where which who why will with would you your yours""".split()
)


def _tokens(text: str) -> list[str]:
    out = []
    for word in re.findall(r"[£$€]?\w+(?:[.,]\w+)*%?", normalise(text)):
        if word in _STOP:
            continue
        plural = len(word) > 4 and word.endswith("s") and not word.endswith("ss")
        out.append(word[:-1] if plural else word)
    return out


@dataclass(frozen=True, slots=True)
class Passage:
    source: str
    text: str  # headings + passage, what a hit carries
    tokens: frozenset[str]


class KeywordRetriever:
    """A deliberately naive baseline: passages scored by the idf-weighted share of the
    question's words they contain. Scores are in [0, 1]."""

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        df: Counter[str] = Counter()
        for p in passages:
            df.update(p.tokens)
        n = len(passages)
        self.idf = {t: math.log(1 + n / c) for t, c in df.items()}
        self.default_idf = math.log(1 + n)

    @classmethod
    def from_docs(cls, docs_dir: Path | str = DOCS_DIR, max_words: int = 120) -> KeywordRetriever:
        passages = []
        for path in sorted(Path(docs_dir).iterdir()):
            if not path.is_file():
                continue
            # Pack consecutive blocks under one heading path into passages of <= max_words.
            groups: list[tuple[tuple[str, ...], list[str]]] = []
            for block in document_blocks(path):
                last = groups[-1] if groups else None
                words = len(block.text.split())
                if (
                    last
                    and last[0] == block.headings
                    and sum(len(t.split()) for t in last[1]) + words <= max_words
                ):
                    last[1].append(block.text)
                else:
                    groups.append((block.headings, [block.text]))
            for headings, texts in groups:
                header = " > ".join(h for h in headings if h)
                text = (header + "\n" if header else "") + "\n".join(texts)
                passages.append(Passage(path.name, text, frozenset(_tokens(text))))
        return cls(passages)

    async def __call__(self, question: str) -> list[Hit]:
        q = set(_tokens(question))
        total = sum(self.idf.get(t, self.default_idf) for t in q) or 1.0
        scored = []
        for p in self.passages:
            overlap = sum(self.idf[t] for t in q & p.tokens)
            if overlap:
                scored.append(Hit(p.source, p.text, overlap / total))
        scored.sort(key=lambda h: h.score, reverse=True)
        return scored[:10]


# ---------------------------------------------------------------------------- CLI


async def _load_retriever(spec: str) -> Retriever:
    """``module:attr`` names a retriever (one parameter) or a factory (none, sync or async)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit("--retriever takes module.path:attribute")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    required = [
        p
        for p in inspect.signature(obj).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if required and not inspect.isclass(obj):
        return obj  # type: ignore[no-any-return]
    made = obj()
    if inspect.isawaitable(made):
        made = await made
    return made  # type: ignore[no-any-return]


async def _run(args: argparse.Namespace, questions: list[Question]) -> Report:
    # Build and use the retriever in one event loop (gRPC channels are bound to theirs).
    if args.selftest:
        retriever: Retriever = KeywordRetriever.from_docs(args.docs)
        name = "self-test keyword overlap"
    else:
        retriever = await _load_retriever(args.retriever)
        name = args.retriever
    return await evaluate(retriever, questions, k=args.k, name=name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--validate", action="store_true", help="check the data set")
    mode.add_argument("--selftest", action="store_true", help="run a naive keyword retriever")
    mode.add_argument("--retriever", metavar="MODULE:ATTR", help="evaluate this retriever")
    parser.add_argument("--questions", type=Path, default=QUESTIONS_PATH)
    parser.add_argument("--docs", type=Path, default=DOCS_DIR)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument("--brief", action="store_true", help="leave out per-question rows")
    args = parser.parse_args(argv)

    if args.validate:
        problems = validate_dataset(args.questions, args.docs)
        questions = load_questions(args.questions) if not problems else []
        for p in problems:
            print(f"PROBLEM: {p}")
        if problems:
            print(f"{len(problems)} problem(s)")
            return 1
        kinds = Counter(q.kind for q in questions)
        langs = Counter(q.language for q in questions)
        print(
            f"OK: {len(questions)} questions; "
            + ", ".join(f"{k} {kinds[k]}" for k in KINDS)
            + "; "
            + ", ".join(f"{lang} {langs[lang]}" for lang in LANGUAGES)
        )
        return 0

    report = asyncio.run(_run(args, load_questions(args.questions)))
    print(report.to_markdown(details=not args.brief))
    if args.json:
        args.json.write_text(report.to_json(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
