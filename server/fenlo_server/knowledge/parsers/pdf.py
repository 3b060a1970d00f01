"""PDF: text extracted page by page with pypdf, running headers and footers
removed, and paragraphs, headings and list items guessed from the lines."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from fenlo_server.knowledge.parsers.common import (
    MAX_PDF_CONTENT_BYTES,
    MAX_PDF_PAGES,
    PDF,
    _check_size,
    _clean,
    _newlines,
)
from fenlo_server.knowledge.types import Block, BlockKind, ParsedDocument, ParseError

_BULLET = re.compile(r"^(?:[•◦▪▫●○■□‣–\-*]|\d{1,3}[.)]|[a-z][.)])\s+(\S.*)$")
_NUMBERED_HEADING = re.compile(r"^(\d{1,2}(?:\.\d{1,2}){0,5})\.?\s+([A-Z].*)$")
_SENTENCE_END = re.compile(r"[.!?:;…][\"'”’)\]]*$")
_TOC_LEADER = re.compile(r"(?:\.\s?){4,}\s*[\divxlc]+$", re.IGNORECASE)
_PAGE_NUMBER = re.compile(r"^(?:page\s*)?\d{1,5}(?:\s*(?:of|/)\s*\d{1,5})?$", re.IGNORECASE)
_LIGATURES = str.maketrans(
    {"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"}
)
_SMALL_WORDS = frozenset(
    "a an and as at but by for from in into of on or the to with via vs per de la le et".split()
)


def _pdf_error(reason: str) -> ParseError:
    return ParseError(
        "malformed",
        f"This PDF could not be read ({reason}). Open it and save or export it again "
        "(or print it to a new PDF), then upload the new file.",
    )


def _content_bomb() -> ParseError:
    return ParseError(
        "too_large",
        "This PDF's pages hold more than "
        f"{MAX_PDF_CONTENT_BYTES // (1024 * 1024)} MB of drawing instructions, the limit. "
        "Split it into smaller documents, or print it to a new PDF, and upload that.",
    )


class _ContentBudget:
    """The bytes of drawing instructions text extraction parses, counted over the
    whole document: each page's content streams, and a form XObject each time a
    page draws it (pypdf decodes a stream once but parses it at every use). A few
    kilobytes of file could otherwise hold gigabytes of instructions: a compressed
    stream shared by every page, or one form drawn a thousand times.

    pypdf swallows errors raised while it draws a form, so once the budget is
    spent every later call raises again, up to the page's own instructions.
    """

    def __init__(self) -> None:
        self._left = MAX_PDF_CONTENT_BYTES
        self._resources: list[Any] = []  # of the page, then of each form being drawn

    def page(self, page: Any) -> None:
        self._resources = [_resolve(page.get("/Resources"))]
        contents = _resolve(page.get("/Contents"))
        for stream in contents if isinstance(contents, list) else [contents]:
            self._charge_stream(_resolve(stream))

    def before(self, operator: bytes, operands: Any, *_: Any) -> None:
        self._check()
        if operator != b"Do" or not operands:
            return
        resources = self._resources[-1]
        xobjects = _resolve(resources.get("/XObject")) if isinstance(resources, dict) else None
        xobject = _resolve(xobjects.get(operands[0])) if isinstance(xobjects, dict) else None
        if isinstance(xobject, dict) and xobject.get("/Subtype") != "/Image":
            # pypdf parses anything drawn that is not an image as a form, now.
            self._charge_stream(xobject)
            self._resources.append(_resolve(xobject.get("/Resources")))
        else:
            self._resources.append(None)  # popped again after the operator

    def after(self, operator: bytes, operands: Any, *_: Any) -> None:
        if operator == b"Do" and operands and len(self._resources) > 1:
            self._resources.pop()
        self._check()

    def _charge_stream(self, stream: Any) -> None:
        from pypdf.errors import LimitReachedError

        if not hasattr(stream, "get_data"):
            return
        try:
            size = len(stream.get_data())  # decoded once, then kept by pypdf
        except LimitReachedError as error:  # it decodes to more than the budget
            raise _content_bomb() from error
        except Exception:
            # Damaged: pypdf will try again at every use, so every try costs.
            self._charge(len(getattr(stream, "_data", b"") or b""))
            raise
        self._charge(size)

    def _charge(self, size: int) -> None:
        self._left -= size
        self._check()

    def _check(self) -> None:
        if self._left < 0:
            raise _content_bomb()


def _resolve(value: Any) -> Any:
    return value.get_object() if hasattr(value, "get_object") else value


def _parse_pdf(data: bytes, max_text_chars: int) -> ParsedDocument:
    from pypdf import apply_configuration

    # No single stream may decode to more than the whole document may hold.
    limit = MAX_PDF_CONTENT_BYTES
    with apply_configuration(
        zlib_maximum_output_length=limit,
        lzw_maximum_output_length=limit,
        run_length_maximum_output_length=limit,
        brotli_maximum_output_length=limit,
        array_based_stream_maximum_output_length=limit,
    ):
        return _read_pdf(data, max_text_chars)


def _read_pdf(data: bytes, max_text_chars: int) -> ParsedDocument:
    from pypdf import PasswordType, PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")  # many PDFs only restrict printing or copying
            except Exception:  # any failure means we cannot open it
                opened = PasswordType.NOT_DECRYPTED
            if opened == PasswordType.NOT_DECRYPTED:
                raise ParseError(
                    "encrypted",
                    "This PDF is password-protected. Remove the password "
                    "(save a copy without protection) and upload it again.",
                )
        page_count = len(reader.pages)
    except ParseError:
        raise
    except Exception as error:  # pypdf raises many kinds on damaged files
        raise _pdf_error(type(error).__name__) from error
    if page_count > MAX_PDF_PAGES:
        raise ParseError(
            "too_large",
            f"This PDF has {page_count:,} pages, more than the limit of {MAX_PDF_PAGES:,}. "
            "Split it into smaller documents and upload them separately.",
        )
    pages: list[list[str]] = []
    failures = 0
    chars = 0
    budget = _ContentBudget()
    for index in range(page_count):
        try:
            page = reader.pages[index]
            budget.page(page)
            text = (
                page.extract_text(
                    visitor_operand_before=budget.before, visitor_operand_after=budget.after
                )
                or ""
            )
        except ParseError:
            raise
        except Exception:  # one damaged page should not lose the others
            failures += 1
            continue
        chars += len(text)
        # Extracted text is never shorter than the normalised text, give or take spacing.
        _check_size(chars // 2, max_text_chars)
        pages.append(_newlines(text.translate(_LIGATURES)).split("\n"))
    if page_count and failures == page_count:
        raise _pdf_error("no page could be read")
    return ParsedDocument(PDF, _pdf_blocks(pages), _pdf_title(reader))


def _pdf_title(reader: object) -> str | None:
    try:
        metadata = getattr(reader, "metadata", None)
        title = getattr(metadata, "title", None) if metadata is not None else None
    except Exception:  # a damaged info dictionary is not worth failing for
        return None
    if not isinstance(title, str):
        return None
    title = _clean(title)
    if not title or re.search(r"\.(docx?|pdf|pptx?|xlsx?|txt)$|^untitled$", title, re.I):
        return None
    return title


def _pdf_blocks(pages: list[list[str]]) -> list[Block]:
    blocks: list[Block] = []
    for lines in _without_running_lines(pages):
        page_blocks = _pdf_page_blocks(lines)
        if blocks and page_blocks and _continues(blocks[-1], page_blocks[0]):
            blocks[-1] = Block(
                blocks[-1].kind, _join_lines(blocks[-1].text, page_blocks[0].text), blocks[-1].level
            )
            page_blocks = page_blocks[1:]
        blocks.extend(page_blocks)
    return blocks


def _continues(previous: Block, first: Block) -> bool:
    """A paragraph cut by a page break: no sentence end before, lower case after."""
    return (
        previous.kind in ("paragraph", "list_item")
        and first.kind == "paragraph"
        and not _SENTENCE_END.search(previous.text)
        and first.text[:1].islower()
    )


def _without_running_lines(pages: list[list[str]]) -> list[list[str]]:
    """Pages without page numbers and the headers and footers repeated on most pages."""
    cleaned = [[_clean(line) for line in page] for page in pages]
    cleaned = [[line for line in page if line] for page in cleaned]

    def key(line: str) -> str:
        return re.sub(r"\d+", "#", line.lower())

    edges: dict[str, int] = {}
    for page in cleaned:
        for line in {key(line) for line in page[:2] + page[-2:]}:
            edges[line] = edges.get(line, 0) + 1
    repeated = (
        {line for line, count in edges.items() if count >= max(3, 0.6 * len(cleaned))}
        if len(cleaned) >= 3
        else set()
    )
    result: list[list[str]] = []
    for page in cleaned:
        kept = []
        for index, line in enumerate(page):
            at_edge = index < 2 or index >= len(page) - 2
            if at_edge and (_PAGE_NUMBER.match(line) or key(line) in repeated):
                continue
            if _TOC_LEADER.search(line):
                continue  # a table of contents entry: "Returns . . . . . 12"
            kept.append(line)
        result.append(kept)
    return result


def _join_lines(text: str, line: str) -> str:
    """Join a wrapped line, mending a word hyphenated across the break."""
    if re.search(r"[^\W\d_]-$", text) and line[:1].islower():
        return text[:-1] + line
    return f"{text} {line}" if text else line


def _pdf_page_blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    widths = sorted(len(line) for line in lines)
    typical = widths[int(len(widths) * 0.9)] if widths else 0
    text = ""
    kind: BlockKind = "paragraph"

    def flush() -> None:
        nonlocal text, kind
        if text:
            blocks.append(Block(kind, text, 1 if kind == "list_item" else 0))
        text, kind = "", "paragraph"

    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        bullet = _BULLET.match(line)
        if bullet and not _numbered_heading(line, following):
            flush()
            kind, text = "list_item", bullet.group(1)
        elif (not text or _SENTENCE_END.search(text) or _numbered_heading(line, following)) and (
            level := _pdf_heading_level(line, following, typical)
        ):
            flush()
            blocks.append(Block("heading", line, level))
            continue
        else:
            text = _join_lines(text, line)
        if _SENTENCE_END.search(line) and len(line) < 0.85 * typical:
            flush()  # a short line that ends a sentence ends its paragraph
    flush()
    return blocks


def _pdf_heading_level(line: str, following: str, typical: int) -> int:
    """A cheap guess: a short line without end punctuation, numbered, in capitals or
    in title case, followed by a line that starts a sentence. 0 when not a heading."""
    words = line.split()
    if (
        not 1 <= len(words) <= 10
        or len(line) > 80
        or _SENTENCE_END.search(line)
        or line.endswith(",")
        or not following
        or not (following[:1].isupper() or following[:1].isdigit() or _BULLET.match(following))
    ):
        return 0
    numbered = _NUMBERED_HEADING.match(line)
    if numbered and not (_BULLET.match(line) and not _numbered_heading(line, following)):
        return min(6, numbered.group(1).count(".") + 1)
    letters = [ch for ch in line if ch.isalpha()]
    if len(letters) >= 3 and all(ch.isupper() for ch in letters):
        return 1
    if not line[:1].isupper() or len(line) >= 0.7 * max(typical, 1):
        return 0
    if _title_case(words) and len(following) > len(line):
        return 2
    return 0


def _title_case(words: Sequence[str]) -> bool:
    significant = [w for w in words if w.lower() not in _SMALL_WORDS and w[:1].isalpha()]
    return bool(significant) and all(w[:1].isupper() for w in significant)


def _numbered_heading(line: str, following: str) -> bool:
    """ "1. Introduction" is a heading, "1. Bring the receipt" a list item: a heading
    is in title case and is not followed by the next item of a list."""
    match = _NUMBERED_HEADING.match(line)
    return (
        match is not None
        and _title_case(match.group(2).split())
        and not _SENTENCE_END.search(line)
        and not _BULLET.match(following)
    )
