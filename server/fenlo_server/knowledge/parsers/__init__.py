"""Turn an uploaded file into text blocks: plain text, Markdown, HTML, PDF or DOCX.

The type comes from the content (magic bytes, then sniffing), never from the file
name or the declared MIME type alone: those only tip the balance between Markdown
and plain text, and towards HTML when the content has tags. Whatever cannot
become text raises :class:`ParseError` with a reason to branch on and a message
that tells the uploader what to do.

``parse`` is synchronous and CPU-bound; the caller runs it in a thread. Hostile
input is bounded: PDFs by page count, extracted text and the drawing
instructions parsed, DOCX by the size and compression ratio of the XML it
expands to (read a chunk at a time, DTDs refused), HTML by nesting depth.

The work is split by concern: :mod:`.detect` tells the type and decodes text,
:mod:`.text` reads plain text and Markdown, :mod:`.html`, :mod:`.pdf` and
:mod:`.docx` read their formats, and :mod:`.common` holds what they share (the
type names, the limits, whitespace normalisation).
"""

from __future__ import annotations

from fenlo_server.knowledge.parsers.common import (
    DOCX,
    HTML,
    MARKDOWN,
    MAX_DOCX_DEPTH,
    MAX_DOCX_XML_BYTES,
    MAX_HTML_DEPTH,
    MAX_PDF_CONTENT_BYTES,
    MAX_PDF_PAGES,
    MAX_TITLE_CHARS,
    MAX_ZIP_ENTRIES,
    MAX_ZIP_RATIO,
    PDF,
    PLAIN,
    SUPPORTED,
    _check_size,
    _clean,
    _clean_code,
)
from fenlo_server.knowledge.parsers.detect import _decode, _media_type, _ole_error, _sniff_text
from fenlo_server.knowledge.parsers.docx import _parse_docx
from fenlo_server.knowledge.parsers.html import _parse_html
from fenlo_server.knowledge.parsers.pdf import _parse_pdf
from fenlo_server.knowledge.parsers.text import _parse_markdown, _parse_plain
from fenlo_server.knowledge.types import Block, ParsedDocument, ParseError

__all__ = [
    "DOCX",
    "HTML",
    "MARKDOWN",
    "MAX_DOCX_DEPTH",
    "MAX_DOCX_XML_BYTES",
    "MAX_HTML_DEPTH",
    "MAX_PDF_CONTENT_BYTES",
    "MAX_PDF_PAGES",
    "MAX_TITLE_CHARS",
    "MAX_ZIP_ENTRIES",
    "MAX_ZIP_RATIO",
    "PDF",
    "PLAIN",
    "SUPPORTED",
    "parse",
]

_EMPTY = (
    "No text could be extracted from this document. If it is a scan or made of images, "
    "upload a version with selectable text (for example, after running OCR)."
)


def parse(
    data: bytes,
    *,
    filename: str | None = None,
    declared_mime: str | None = None,
    max_text_chars: int = 2_000_000,
) -> ParsedDocument:
    """The blocks of ``data`` in reading order, whitespace-normalised and non-empty.

    Raises :class:`ParseError` when the content is not a supported type, holds no
    text, is password-protected, damaged, or has more than ``max_text_chars``
    characters of text.
    """
    mime = _media_type(declared_mime)
    if data[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
        raise _ole_error(data)
    if b"%PDF-" in data[:1024].lstrip()[:16]:
        document = _parse_pdf(data, max_text_chars)
    elif data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        document = _parse_docx(data, max_text_chars)
    else:
        text = _decode(data, declared_mime)
        kind = _sniff_text(text, filename, mime)
        if kind == HTML:
            document = _parse_html(text)
        elif kind == MARKDOWN:
            document = _parse_markdown(text)
        else:
            document = ParsedDocument(PLAIN, _parse_plain(text))
    return _finish(document, max_text_chars)


def _finish(document: ParsedDocument, max_text_chars: int) -> ParsedDocument:
    blocks: list[Block] = []
    for block in document.blocks:
        text = _clean_code(block.text) if block.kind == "code" else _clean(block.text)
        if text.strip():
            blocks.append(Block(block.kind, text, block.level))
    if not blocks:
        raise ParseError("empty_text", _EMPTY)
    _check_size(sum(len(block.text) for block in blocks), max_text_chars)
    title = _clean(document.title or "")[:MAX_TITLE_CHARS].strip() or None
    return ParsedDocument(document.detected_type, blocks, title)
