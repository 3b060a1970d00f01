"""Turn an uploaded file into text blocks: plain text, Markdown, HTML, PDF or DOCX.

The type comes from the content (magic bytes, then sniffing), never from the file
name or the declared MIME type alone: those only tip the balance between Markdown
and plain text, and towards HTML when the content has tags. Whatever cannot
become text raises :class:`ParseError` with a reason to branch on and a message
that tells the uploader what to do.

``parse`` is synchronous and CPU-bound; the caller runs it in a thread. Hostile
input is bounded: PDFs by page count and extracted text, DOCX by the size and
compression ratio of the XML it expands to, HTML by nesting depth.
"""

from __future__ import annotations

import codecs
import html
import io
import re
import textwrap
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from xml.etree import ElementTree

from fenlo_server.knowledge.types import Block, BlockKind, ParsedDocument, ParseError

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

MAX_PDF_PAGES = 2_000
MAX_DOCX_XML_BYTES = 50 * 1024 * 1024  # the XML parts read, uncompressed, together
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of a part over 1 MiB
MAX_ZIP_ENTRIES = 10_000
MAX_HTML_DEPTH = 200  # deeper elements are flattened into their ancestor
MAX_TITLE_CHARS = 300

SUPPORTED = "plain text, Markdown, HTML, PDF or DOCX"
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


def _check_size(chars: int, max_text_chars: int) -> None:
    if chars > max_text_chars:
        raise ParseError(
            "too_large",
            f"The document has more than {max_text_chars:,} characters of text, the limit. "
            "Split it into smaller documents and upload them separately.",
        )


# --- text normalisation -------------------------------------------------------

# Soft hyphen, zero-width space, word joiner, BOM. (ZWJ and ZWNJ stay: some scripts
# and emoji need them.)
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u2060\ufeff"), None)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clean(text: str) -> str:
    """One line of text: invisible characters gone, white space collapsed."""
    text = unicodedata.normalize("NFC", text.translate(_INVISIBLE))
    return " ".join(_CONTROL.sub(" ", text).split())


def _clean_code(text: str) -> str:
    """Code keeps its lines and relative indentation; blank lines at the ends go."""
    text = unicodedata.normalize("NFC", text.translate(_INVISIBLE)).expandtabs(4)
    lines = [_CONTROL.sub(" ", line).rstrip() for line in text.split("\n")]
    return textwrap.dedent("\n".join(lines)).strip("\n")


# --- type detection and decoding -------------------------------------------------

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),  # only consulted for data that is binary anyway
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a program"),
    (b"MZ", "a program"),
    (b"ID3", "an audio file"),
    (b"OggS", "an audio file"),
    (b"fLaC", "an audio file"),
)


def _unsupported(what: str) -> ParseError:
    return ParseError(
        "unsupported_type",
        f"This file looks like {what}, which is not supported. "
        f"Upload {SUPPORTED}, or convert the file to one of these first.",
    )


def _ole_error(data: bytes) -> ParseError:
    # Password-protected Office files are an OLE container holding the encrypted
    # package next to an "EncryptionInfo" stream; other OLE files are legacy formats.
    if "EncryptionInfo".encode("utf-16-le") in data:
        return ParseError(
            "encrypted",
            "This document is password-protected. Remove the password "
            "(save a copy without protection) and upload it again.",
        )
    return _unsupported("a legacy Office document (.doc, .xls or .ppt); save it as DOCX or PDF")


def _media_type(declared_mime: str | None) -> str:
    return (declared_mime or "").split(";")[0].strip().lower()


def _declared_charset(declared_mime: str | None) -> str | None:
    match = re.search(r"charset\s*=\s*\"?([\w.:-]+)", declared_mime or "", re.IGNORECASE)
    return match.group(1) if match else None


def _decode(data: bytes, declared_mime: str | None) -> str:
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE, whose BOM it starts with
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            return _newlines(data[len(bom) :].decode(codec, errors="replace"))
    if data.startswith(b"{\\rtf"):
        raise _unsupported("an RTF document; save it as DOCX or PDF")
    charset = _declared_charset(declared_mime) or _meta_charset(data)
    if charset and _codec(charset) in ("utf-16", "utf-16-le", "utf-16-be"):
        return _newlines(data.decode(_codec(charset) or "utf-16", errors="replace"))
    if _looks_binary(data[:65536]):
        what = next((what for magic, what in _MAGIC if data.startswith(magic)), "a binary file")
        raise _unsupported(what)
    try:
        return _newlines(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    for candidate in (_codec(charset) if charset else None, "cp1252"):
        if candidate:
            try:
                return _newlines(data.decode(candidate))
            except UnicodeDecodeError:
                continue
    return _newlines(data.decode("latin-1"))


def _codec(charset: str) -> str | None:
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return None


def _meta_charset(data: bytes) -> str | None:
    head = data[:4096]
    match = re.search(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", head, re.IGNORECASE)
    if match is None:
        match = re.search(rb"<\?xml[^>]+encoding\s*=\s*[\"']([\w.:-]+)", head, re.IGNORECASE)
    return match.group(1).decode("ascii") if match else None


def _looks_binary(sample: bytes) -> bool:
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    text = sample.decode("utf-8", errors="replace")
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v\b\x1b")
    invalid = text.count("\ufffd")
    # Legacy 8-bit text is invalid UTF-8 too but has no control characters.
    return controls > 0.05 * len(text) or (
        invalid > 0.3 * len(text) and controls > 0.005 * len(text)
    )


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


_HTML_START = re.compile(
    r"(?:<!--.*?-->\s*)*(?:<!doctype\s+html|<html[\s>]|<head[\s>]|<body[\s>])", re.DOTALL
)
_HTML_TAG = re.compile(
    r"</?(?:p|div|span|a|br|h[1-6]|ul|ol|li|table|tr|td|th|section|article|main|img|"
    r"strong|em|b|i|meta|link|title|script|style|nav|header|footer|pre|code|blockquote)\b[^>]*>",
    re.IGNORECASE,
)
_MD_EXTENSIONS = (".md", ".markdown", ".mdown", ".mkd", ".mdx")
_MD_MIMES = ("text/markdown", "text/x-markdown")
_HTML_EXTENSIONS = (".html", ".htm", ".xhtml")
_HTML_MIMES = ("text/html", "application/xhtml+xml")


def _sniff_text(text: str, filename: str | None, mime: str) -> str:
    name = (filename or "").lower()
    says_markdown = name.endswith(_MD_EXTENSIONS) or mime in _MD_MIMES
    head = text[:4096].lstrip().lower()
    if _HTML_START.match(head) or (
        head.startswith("<?xml") and re.search(r"<html[\s>]", head[:1024])
    ):
        return HTML
    if head.startswith(("<?xml", "<svg")):
        raise _unsupported("an XML or SVG file")
    sample = text[:65536]
    tags = _HTML_TAG.findall(sample)
    if tags and (name.endswith(_HTML_EXTENSIONS) or mime in _HTML_MIMES):
        return HTML
    if not says_markdown and re.search(r"<body[\s>]", head):
        return HTML
    if not says_markdown and len(tags) >= 2:
        tag_share = sum(len(tag) for tag in tags) / max(1, len(sample.strip()))
        if tag_share > 0.15 and not _MD_ATX_LINE.search(sample):
            return HTML
    if says_markdown or _looks_like_markdown(sample):
        return MARKDOWN
    return PLAIN


_MD_ATX_LINE = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
_MD_FENCE_LINE = re.compile(r"^ {0,3}(?:```|~~~)", re.MULTILINE)
_MD_LINK_INLINE = re.compile(r"!?\[[^\]\n]+\]\([^)\s]+(?:\s+\"[^\"]*\")?\)")
_MD_TABLE_LINE = re.compile(r"^ {0,3}\|?\s*:?-{3,}:?\s*\|", re.MULTILINE)
_MD_EMPHASIS = re.compile(r"(?<![\w*])\*\*\S[^*\n]*\*\*(?![\w*])|(?<!\w)__\S[^_\n]*__(?!\w)")


def _looks_like_markdown(sample: str) -> bool:
    """Conservative: lists alone are plain text too; Markdown needs more signals."""
    headings = len(_MD_ATX_LINE.findall(sample))
    signals = sum(
        bool(pattern.search(sample))
        for pattern in (_MD_ATX_LINE, _MD_FENCE_LINE, _MD_LINK_INLINE, _MD_TABLE_LINE, _MD_EMPHASIS)
    )
    first_line = sample.lstrip().split("\n", 1)[0]
    return headings >= 2 or signals >= 2 or bool(_MD_ATX_LINE.match(first_line))


# --- plain text -------------------------------------------------------------------

_TEXT_LIST = re.compile(r"^([ \t]*)(?:[-*+•◦▪‣–]|\d{1,3}[.)])[ \t]+(\S.*)$")


class _ListLevels:
    """List nesting from indentation: deeper indentation, deeper level (1 = top)."""

    def __init__(self) -> None:
        self._indents: list[int] = []

    def level(self, indent: int) -> int:
        while self._indents and self._indents[-1] > indent:
            self._indents.pop()
        if not self._indents or self._indents[-1] < indent:
            self._indents.append(indent)
        return len(self._indents)

    def reset(self) -> None:
        self._indents.clear()


def _parse_plain(text: str) -> list[Block]:
    """Paragraphs split on blank lines; lines with a bullet or number are list items."""
    blocks: list[Block] = []
    levels = _ListLevels()
    for chunk in re.split(r"\n[ \t]*\n", text):
        lines: list[str] = []  # of the open paragraph or list item
        level = 0  # of the open list item; 0 for a paragraph
        saw_item = False
        for line in chunk.split("\n"):
            if not line.strip():
                continue
            match = _TEXT_LIST.match(line)
            if match:
                _add_text_block(blocks, lines, level)
                level = levels.level(len(match.group(1).expandtabs(4)))
                lines = [match.group(2)]
                saw_item = True
            elif level and line[:1] in (" ", "\t"):
                lines.append(line)  # an indented continuation of the item
            else:
                if level:
                    _add_text_block(blocks, lines, level)
                    lines, level = [], 0
                    levels.reset()
                lines.append(line)
        _add_text_block(blocks, lines, level)
        if not saw_item:
            levels.reset()
    return blocks


def _add_text_block(blocks: list[Block], lines: list[str], level: int) -> None:
    if lines:
        kind: BlockKind = "list_item" if level else "paragraph"
        blocks.append(Block(kind, " ".join(lines), level))


# --- Markdown -------------------------------------------------------------------

_MD_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_MD_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_MD_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_MD_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_MD_ITEM = re.compile(r"^([ \t]*)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$")
_MD_TABLE_SEPARATOR = re.compile(r"^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_MD_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*\S+")
_MD_QUOTE = re.compile(r"^ {0,3}>[ \t]?")
_MD_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)

_MD_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_MD_AUTOLINK = re.compile(r"<((?:https?|ftp)://[^>\s]+|mailto:[^>\s]+)>")
_MD_IMAGE = re.compile(r"!\[[^\]]*\](?:\((?:[^()]|\([^()]*\))*\)|\[[^\]]*\])")
_MD_LINK = re.compile(r"\[([^\]]*)\]\((?:[^()]|\([^()]*\))*\)")
_MD_REFERENCE_LINK = re.compile(r"\[([^\]]+)\]\[[^\]]*\]")
_MD_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_MD_EM_STAR = re.compile(r"\*(?=\S)(.+?)(?<=\S)\*")
_MD_EM_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
_MD_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_MD_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>")
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def _md_inline(text: str) -> str:
    """Markdown inline markup reduced to its text: link text kept, images dropped,
    code spans and escaped characters kept literally."""
    kept: list[str] = []

    def keep(value: str) -> str:
        kept.append(value)
        return f"\ue000{len(kept) - 1}\ue001"

    text = _MD_CODE_SPAN.sub(lambda m: keep(m.group(2).strip()), text)
    text = _MD_ESCAPE.sub(lambda m: keep(m.group(1)), text)
    text = _MD_AUTOLINK.sub(lambda m: keep(m.group(1)), text)
    text = _MD_IMAGE.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_REFERENCE_LINK.sub(r"\1", text)
    text = _MD_TAG.sub("", text)
    for _ in range(2):  # ***both*** is strong around emphasis
        text = _MD_STRONG.sub(r"\2", text)
        text = _MD_EM_STAR.sub(r"\1", text)
        text = _MD_EM_UNDERSCORE.sub(r"\1", text)
    text = _MD_STRIKE.sub(r"\1", text)
    text = html.unescape(text)
    return _PLACEHOLDER.sub(lambda m: kept[int(m.group(1))], text)


def _md_cells(line: str) -> list[str]:
    line = line.strip()
    line = line.removeprefix("|")
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [_md_inline(cell.strip()) for cell in re.split(r"(?<!\\)\|", line)]


def _front_matter(lines: list[str]) -> tuple[list[str], str | None]:
    """Lines without a leading YAML front matter block, and its ``title``."""
    if not lines or lines[0].strip() != "---":
        return lines, None
    for end in range(1, min(len(lines), 200)):
        if lines[end].strip() in ("---", "..."):
            title = None
            for line in lines[1:end]:
                match = re.match(r"^title:\s*(.+?)\s*$", line)
                if match:
                    title = match.group(1).strip("\"'")
            return lines[end + 1 :], title
    return lines, None


def _parse_markdown(text: str) -> ParsedDocument:
    lines, title = _front_matter(_MD_COMMENT.sub("", text).split("\n"))
    blocks = _MarkdownParser().run(lines)
    if title is None:
        title = next((b.text for b in blocks if b.kind == "heading" and b.level == 1), None)
    return ParsedDocument(MARKDOWN, blocks, title)


class _MarkdownParser:
    """A line-based reading of CommonMark's blocks: enough structure for chunking."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._paragraph: list[str] = []
        self._item: list[str] = []
        self._item_level = 0
        self._levels = _ListLevels()
        self._in_list = False

    def _flush_paragraph(self) -> None:
        if self._paragraph:
            self.blocks.append(Block("paragraph", _md_inline(" ".join(self._paragraph))))
            self._paragraph = []

    def _flush_item(self) -> None:
        if self._item:
            self.blocks.append(
                Block("list_item", _md_inline(" ".join(self._item)), self._item_level)
            )
            self._item = []

    def _flush(self, *, end_list: bool = True) -> None:
        self._flush_paragraph()
        self._flush_item()
        if end_list:
            self._in_list = False
            self._levels.reset()

    def run(self, raw_lines: Sequence[str]) -> list[Block]:
        lines = [self._unquote(line.expandtabs(4)) for line in raw_lines]
        index = 0
        blank_before = True
        while index < len(lines):
            line = lines[index]
            stripped = line.strip()
            index += 1
            if not stripped:
                self._flush_paragraph()
                blank_before = True
                continue
            consumed = self._block_start(line, lines, index, blank_before)
            if consumed is not None:
                index = consumed
                blank_before = False
                continue
            self._text_line(line, blank_before)
            blank_before = False
        self._flush()
        return self.blocks

    @staticmethod
    def _unquote(line: str) -> str:
        while _MD_QUOTE.match(line):
            line = _MD_QUOTE.sub("", line, count=1)
        return line

    def _block_start(
        self, line: str, lines: Sequence[str], index: int, blank_before: bool
    ) -> int | None:
        """Handle a line that starts a block; the index to go on from, or None."""
        fence = _MD_FENCE.match(line)
        if fence and not (fence.group(2)[0] == "`" and "`" in fence.group(3)):
            self._flush()
            return self._fenced_code(lines, index, len(fence.group(1)), fence.group(2))
        setext = _MD_SETEXT.match(line)
        if setext and self._paragraph and not self._item:
            level = 1 if setext.group(1)[0] == "=" else 2
            text = _md_inline(" ".join(self._paragraph))
            self._paragraph = []
            self._flush()
            self.blocks.append(Block("heading", text, level))
            return index
        if _MD_RULE.match(line):
            self._flush()
            return index
        heading = _MD_HEADING.match(line)
        if heading:
            self._flush()
            text = _md_inline(heading.group(2) or "")
            if text.strip():
                self.blocks.append(Block("heading", text, len(heading.group(1))))
            return index
        if "|" in line and index < len(lines) and _MD_TABLE_SEPARATOR.match(lines[index]):
            separator = lines[index]
            if "|" in separator or separator.strip().startswith(":"):
                self._flush()
                return self._table(lines, index - 1)
        item = _MD_ITEM.match(line)
        if item and (item.group(3) or "").strip():
            self._flush(end_list=False)
            if not self._in_list:
                self._levels.reset()
            self._in_list = True
            self._item_level = self._levels.level(len(item.group(1)))
            self._item = [item.group(3).strip()]
            return index
        if _MD_LINK_DEFINITION.match(line):
            self._flush_paragraph()
            return index
        if line.startswith("    ") and blank_before and not self._paragraph and not self._in_list:
            self._flush()
            return self._indented_code(lines, index - 1)
        return None

    def _text_line(self, line: str, blank_before: bool) -> None:
        if self._item and (not blank_before or line.startswith("  ")):
            self._item.append(line.strip())  # a continuation of the list item
            return
        if self._in_list and blank_before and not line.startswith("  "):
            self._flush()  # the list has ended
        elif self._item:
            self._flush_item()
        self._paragraph.append(line.strip())

    def _fenced_code(self, lines: Sequence[str], index: int, indent: int, fence: str) -> int:
        code: list[str] = []
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        while index < len(lines):
            line = lines[index]
            index += 1
            if closing.match(line):
                break
            code.append(re.sub(rf"^ {{0,{indent}}}", "", line))
        if any(line.strip() for line in code):
            self.blocks.append(Block("code", "\n".join(code)))
        return index

    def _indented_code(self, lines: Sequence[str], index: int) -> int:
        code: list[str] = []
        while index < len(lines) and (lines[index].startswith("    ") or not lines[index].strip()):
            code.append(lines[index][4:])
            index += 1
        self.blocks.append(Block("code", "\n".join(code)))
        return index

    def _table(self, lines: Sequence[str], index: int) -> int:
        header = _md_cells(lines[index])
        self._table_row(header)
        index += 2  # the header and the separator
        while index < len(lines) and lines[index].strip() and "|" in lines[index]:
            self._table_row(_md_cells(lines[index]))
            index += 1
        return index

    def _table_row(self, cells: list[str]) -> None:
        if any(cell.strip() for cell in cells):
            self.blocks.append(Block("table_row", " | ".join(cells)))


# --- HTML -----------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Element:
    tag: str
    attrs: dict[str, str]
    children: list[_Element | str] = field(default_factory=list)
    text_chars: int = 0  # characters of text below it, scripts and styles excluded
    has_landmark: bool = False  # a <main>, <article> or <h1> is below it


_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
# Start tags that end an open <p>, an open <li>, and so on (the HTML "implied end tags").
_CLOSES_P = frozenset(
    "address article aside blockquote details dialog div dl fieldset figcaption figure footer "
    "form h1 h2 h3 h4 h5 h6 header hgroup hr main menu nav ol p pre section table ul".split()
)
_IMPLIED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # start tag: (open elements it closes, elements that stop the search)
    "li": (frozenset({"li"}), frozenset({"ul", "ol", "menu"})),
    "dt": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "dd": (frozenset({"dt", "dd"}), frozenset({"dl"})),
    "tr": (frozenset({"tr", "td", "th"}), frozenset({"table", "thead", "tbody", "tfoot"})),
    "td": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "th": (frozenset({"td", "th"}), frozenset({"tr", "table"})),
    "thead": (frozenset({"thead", "tbody", "tfoot", "tr", "td", "th"}), frozenset({"table"})),
    "tbody": (frozenset({"thead", "tbody", "tfoot", "tr", "td", "th"}), frozenset({"table"})),
    "tfoot": (frozenset({"thead", "tbody", "tfoot", "tr", "td", "th"}), frozenset({"table"})),
    "option": (frozenset({"option"}), frozenset({"select", "datalist"})),
}
_P_SCOPE = frozenset({"table", "td", "th", "caption", "button", "template", "html", "object"})


class _TreeBuilder(HTMLParser):
    """A forgiving tree: unclosed elements close where HTML implies, stray end
    tags are ignored, and nesting deeper than MAX_HTML_DEPTH is flattened."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Element("#root", {})
        self._stack = [self.root]

    def _close(self, names: frozenset[str], stop: frozenset[str]) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            tag = self._stack[depth].tag
            if tag in names:
                del self._stack[depth:]
                return
            if tag in stop:
                return

    def _open(self, tag: str, attrs: list[tuple[str, str | None]], *, empty: bool) -> None:
        if tag in _CLOSES_P:
            self._close(frozenset({"p"}), _P_SCOPE)
        if tag in _IMPLIED:
            self._close(*_IMPLIED[tag])
        element = _Element(tag, {name.lower(): value or "" for name, value in attrs})
        self._stack[-1].children.append(element)
        if not empty and tag not in _VOID and len(self._stack) < MAX_HTML_DEPTH:
            self._stack.append(element)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, empty=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs, empty=True)

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


_DROP_TAGS = frozenset(
    "script style noscript template svg nav footer aside form button iframe head title "
    "select textarea object embed canvas audio video map dialog".split()
)
_HEADER_TAGS = frozenset({"header"})
_DROP_ROLES = frozenset(
    "navigation banner contentinfo menu menubar search complementary dialog alertdialog".split()
)
_BOILERPLATE_WORDS = frozenset(
    "nav navbar navigation menu menubar breadcrumb breadcrumbs cookie cookies consent gdpr "
    "banner sidebar footer skiplink skiplinks".split()
)
_HEADER_WORDS = frozenset({"header", "masthead"})
_SKIP_LINK_WORDS = frozenset({"link", "links", "to", "nav", "content", "main"})
_MODIFIER_PREFIXES = ("has-", "with-", "no-", "is-")
_HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
_LISTS = frozenset({"ul", "ol", "menu"})
_BLOCKS = frozenset(
    "p div section article main blockquote address figure figcaption dl dt dd details summary "
    "center hgroup fieldset legend td th tr tbody thead tfoot caption body html header hr "
    "table ul ol li pre h1 h2 h3 h4 h5 h6".split()
)


def _class_words(element: _Element) -> set[str]:
    names = [
        name
        for name in f"{element.attrs.get('class', '')} {element.attrs.get('id', '')}".split()
        if not name.lower().startswith(_MODIFIER_PREFIXES)
    ]
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", " ".join(names))
    return set(re.findall(r"[a-z]+", spaced.lower()))


def _is_hidden(element: _Element) -> bool:
    style = element.attrs.get("style", "").replace(" ", "").lower()
    return (
        "hidden" in element.attrs
        or element.attrs.get("aria-hidden", "").lower() == "true"
        or "display:none" in style
        or "visibility:hidden" in style
    )


class _HtmlReader:
    """Blocks from a tree: boilerplate dropped, the main content preferred."""

    def __init__(self, root: _Element) -> None:
        self._root = root
        _measure(root)
        self._blocks: list[Block] = []
        self._buffer: list[str] = []
        self._page_chars = 1
        self._in_content = False

    def read(self) -> list[Block]:
        self._page_chars = max(1, self._root.text_chars)
        contents = self._landmarks()
        if contents:
            self._in_content = True
            self._page_chars = max(1, sum(element.text_chars for element in contents))
            for element in contents:
                self._walk(element, 0)
                self._flush()
            if self._blocks:
                return self._blocks
        self._in_content = False
        self._page_chars = max(1, self._root.text_chars)
        self._walk(self._root, 0)
        self._flush()
        return self._blocks

    def _landmarks(self) -> list[_Element]:
        """The outermost <main> elements, else the outermost <article> elements."""
        for wanted in ({"main"}, {"article"}):
            found: list[_Element] = []
            stack: list[_Element] = [self._root]
            while stack:
                element = stack.pop()
                for child in reversed(element.children):
                    if isinstance(child, str) or self._dropped(child):
                        continue
                    if child.tag in wanted or (
                        "main" in wanted and child.attrs.get("role", "").lower() == "main"
                    ):
                        found.append(child)
                    else:
                        stack.append(child)
            if found:
                return found
        return []

    def _dropped(self, element: _Element) -> bool:
        tag = element.tag
        if tag in _DROP_TAGS or _is_hidden(element):
            return True
        if tag in _HEADER_TAGS and not self._in_content:
            return True
        if element.attrs.get("role", "").lower() in _DROP_ROLES:
            return True
        words = _class_words(element)
        boilerplate = bool(words & _BOILERPLATE_WORDS) or (
            "skip" in words and bool(words & _SKIP_LINK_WORDS)
        )
        if not boilerplate and not self._in_content:
            boilerplate = bool(words & _HEADER_WORDS)
        # A class name is weak evidence: never drop what holds the page's content.
        return (
            boilerplate and not element.has_landmark and element.text_chars * 2 < self._page_chars
        )

    def _flush(self) -> None:
        text = "".join(self._buffer)
        self._buffer = []
        for paragraph in re.split(r"\n\s*\n", text):
            if paragraph.strip():
                self._blocks.append(Block("paragraph", paragraph))

    def _add(self, kind: BlockKind, text: str, level: int = 0) -> None:
        self._flush()
        if text.strip():
            self._blocks.append(Block(kind, _clean(text), level))

    def _walk(self, element: _Element, list_depth: int) -> None:
        for child in element.children:
            if isinstance(child, str):
                self._buffer.append(child)
            elif not self._dropped(child):
                self._element(child, list_depth)

    def _element(self, element: _Element, list_depth: int) -> None:
        tag = element.tag
        if tag in _HEADINGS:
            self._add("heading", self._text(element), int(tag[1]))
        elif tag == "li":
            self._add("list_item", self._text(element, skip=_LISTS), max(1, list_depth))
            for nested in self._nested_lists(element):
                self._element(nested, list_depth)
        elif tag in _LISTS:
            self._flush()
            self._walk(element, list_depth + 1)
            self._flush()
        elif tag == "table" and not self._is_layout_table(element):
            self._flush()
            self._table(element)
        elif tag == "pre":
            self._flush()
            code = self._text(element, preserve=True)
            if code.strip():
                self._blocks.append(Block("code", code))
        elif tag == "br":
            self._buffer.append("\n")
        elif tag in _BLOCKS:
            self._flush()
            self._walk(element, list_depth)
            self._flush()
        elif tag != "img":
            self._walk(element, list_depth)

    def _text(
        self, element: _Element, *, skip: frozenset[str] = frozenset(), preserve: bool = False
    ) -> str:
        parts: list[str] = []

        def gather(node: _Element) -> None:
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                elif child.tag == "br":
                    parts.append("\n" if preserve else " ")
                elif child.tag not in skip and not self._dropped(child):
                    block = not preserve and child.tag in _BLOCKS
                    if block:
                        parts.append(" ")
                    gather(child)
                    if block:
                        parts.append(" ")

        gather(element)
        return "".join(parts)

    def _nested_lists(self, element: _Element) -> Iterator[_Element]:
        for child in element.children:
            if isinstance(child, str) or self._dropped(child):
                continue
            if child.tag in _LISTS:
                yield child
            else:
                yield from self._nested_lists(child)

    def _is_layout_table(self, table: _Element) -> bool:
        """A table used for page layout holds headings, lists or tables in its cells."""
        stack = [c for c in table.children if isinstance(c, _Element)]
        while stack:
            element = stack.pop()
            if element.tag in _HEADINGS or element.tag in _LISTS or element.tag == "table":
                return True
            stack.extend(c for c in element.children if isinstance(c, _Element))
        return False

    def _table(self, table: _Element) -> None:
        rows: list[_Element] = []
        stack = [c for c in reversed(table.children) if isinstance(c, _Element)]
        while stack:
            element = stack.pop()
            if self._dropped(element):
                continue
            if element.tag == "caption":
                self._add("paragraph", self._text(element))
            elif element.tag == "tr":
                rows.append(element)
            else:
                stack.extend(c for c in reversed(element.children) if isinstance(c, _Element))
        for row in rows:
            cells = [
                _clean(self._text(cell))
                for cell in row.children
                if isinstance(cell, _Element) and cell.tag in ("td", "th")
            ]
            if any(cells):
                self._blocks.append(Block("table_row", " | ".join(cells)))


def _measure(root: _Element) -> None:
    """Fill in text_chars and has_landmark for every element, bottom-up."""
    order: list[_Element] = []
    stack = [root]
    while stack:
        element = stack.pop()
        order.append(element)
        stack.extend(c for c in element.children if isinstance(c, _Element))
    for element in reversed(order):
        for child in element.children:
            if isinstance(child, str):
                element.text_chars += len(child.strip())
            elif child.tag not in ("script", "style", "template"):
                element.text_chars += child.text_chars
                element.has_landmark |= child.has_landmark or child.tag in (
                    "main",
                    "article",
                    "h1",
                )


def _parse_html(text: str) -> ParsedDocument:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    root = builder.root
    title = _find_title(root)
    blocks = _HtmlReader(root).read()
    if not title:
        title = next((b.text for b in blocks if b.kind == "heading" and b.level == 1), None)
    return ParsedDocument(HTML, blocks, title)


def _find_title(root: _Element) -> str | None:
    stack = [root]
    while stack:
        element = stack.pop()
        if element.tag == "title":
            return _clean("".join(c for c in element.children if isinstance(c, str))) or None
        if element.tag in ("body", "svg"):
            continue
        stack.extend(c for c in reversed(element.children) if isinstance(c, _Element))
    return None


# --- PDF ------------------------------------------------------------------------

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


def _parse_pdf(data: bytes, max_text_chars: int) -> ParsedDocument:
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
    for index in range(page_count):
        try:
            text = reader.pages[index].extract_text() or ""
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


# --- DOCX -----------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"


def _docx_error(detail: str) -> ParseError:
    return ParseError(
        "malformed",
        f"This Word document could not be read ({detail}). Open it in Word or another "
        "editor, save it again as .docx (or export a PDF), and upload the new file.",
    )


def _zip_bomb() -> ParseError:
    return ParseError(
        "too_large",
        "This document expands to more than "
        f"{MAX_DOCX_XML_BYTES // (1024 * 1024)} MB of text markup, the limit. "
        "Split it into smaller documents and upload them separately.",
    )


class _DocxParts:
    """Reads the XML parts of a DOCX within one budget of uncompressed bytes."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._archive = archive
        self._budget = MAX_DOCX_XML_BYTES

    def read(self, name: str) -> ElementTree.Element | None:
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            return None
        if info.flag_bits & 0x1:
            raise ParseError(
                "encrypted",
                "This document is password-protected. Remove the password "
                "(save a copy without protection) and upload it again.",
            )
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > self._budget or (info.file_size > 1 << 20 and ratio > MAX_ZIP_RATIO):
            raise _zip_bomb()
        try:
            with self._archive.open(info) as part:
                # The declared size may lie: never read more than the budget allows.
                content = part.read(self._budget + 1)
        except Exception as error:  # zipfile raises many kinds on damaged archives
            raise _docx_error(f"{name}: {type(error).__name__}") from error
        if len(content) > self._budget:
            raise _zip_bomb()
        self._budget -= len(content)
        if b"<!DOCTYPE" in content[:4096].upper():
            raise _docx_error(f"{name} declares a DTD")  # entity expansion: refused
        try:
            return ElementTree.fromstring(content)
        except ElementTree.ParseError as error:
            raise _docx_error(f"{name}: {error}") from error


def _parse_docx(data: bytes, max_text_chars: int) -> ParsedDocument:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except Exception as error:  # zipfile raises many kinds on damaged archives
        raise ParseError(
            "malformed",
            "This ZIP or DOCX file is damaged and could not be opened. Save or export it "
            "again and upload the new file.",
        ) from error
    with archive:
        if len(names) > MAX_ZIP_ENTRIES:
            raise _unsupported(f"an archive of {len(names):,} files")
        if "word/document.xml" not in names:
            if "xl/workbook.xml" in names:
                raise _unsupported("a spreadsheet (XLSX); export the sheets as PDF or HTML")
            if "ppt/presentation.xml" in names:
                raise _unsupported("a presentation (PPTX); export it as PDF")
            if "mimetype" in names and "content.xml" in names:
                raise _unsupported("an OpenDocument file; save it as DOCX or PDF")
            raise _unsupported("a ZIP archive")
        parts = _DocxParts(archive)
        document = parts.read("word/document.xml")
        if document is None:  # pragma: no cover - listed above
            raise _docx_error("no document part")
        styles = _DocxStyles(parts.read("word/styles.xml"))
        core = parts.read("docProps/core.xml")
    body = document.find(f"{_W}body")
    reader = _DocxReader(styles, max_text_chars)
    if body is not None:
        reader.read(body)
    title = reader.title
    if title is None and core is not None:
        title = (core.findtext(_DC_TITLE) or "").strip() or None
    if title is None:
        title = next((b.text for b in reader.blocks if b.kind == "heading" and b.level == 1), None)
    return ParsedDocument(DOCX, reader.blocks, title)


@dataclass(frozen=True, slots=True)
class _Style:
    name: str
    based_on: str | None
    outline: int | None  # 0-based outline level, as Word writes it
    numbered: bool


class _DocxStyles:
    """Paragraph styles by id, to tell headings, titles and lists apart."""

    def __init__(self, root: ElementTree.Element | None) -> None:
        self._styles: dict[str, _Style] = {}
        if root is None:
            return
        for style in root.iter(f"{_W}style"):
            style_id = style.get(f"{_W}styleId")
            if not style_id:
                continue
            name = style.find(f"{_W}name")
            based_on = style.find(f"{_W}basedOn")
            outline = style.find(f"{_W}pPr/{_W}outlineLvl")
            self._styles[style_id] = _Style(
                name=(name.get(f"{_W}val", "") if name is not None else style_id).lower(),
                based_on=based_on.get(f"{_W}val") if based_on is not None else None,
                outline=_int(outline.get(f"{_W}val")) if outline is not None else None,
                numbered=style.find(f"{_W}pPr/{_W}numPr") is not None,
            )

    def _chain(self, style_id: str) -> Iterator[tuple[str, _Style | None]]:
        seen: set[str] = set()
        current: str | None = style_id
        while current and current not in seen and len(seen) < 10:
            seen.add(current)
            style = self._styles.get(current)
            yield current, style
            current = style.based_on if style else None

    def heading_level(self, style_id: str) -> tuple[int, bool]:
        """(level, is the title style); level 0 when not a heading."""
        for current, style in self._chain(style_id):
            name = style.name if style else current.lower()
            if name in ("title",):
                return 1, True
            match = re.fullmatch(r"heading\s*(\d)", name)
            if match:
                return max(1, int(match.group(1))), False
            if style and style.outline is not None and 0 <= style.outline < 9:
                return style.outline + 1, False
        return 0, False

    def is_list(self, style_id: str) -> bool:
        return any(
            (style and style.numbered)
            or (style.name if style else current.lower()).startswith(("list bullet", "list number"))
            for current, style in self._chain(style_id)
        )

    def is_toc(self, style_id: str) -> bool:
        name = self._styles[style_id].name if style_id in self._styles else style_id.lower()
        return bool(re.fullmatch(r"toc\s*\d|toc heading", name))


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _DocxReader:
    def __init__(self, styles: _DocxStyles, max_text_chars: int) -> None:
        self._styles = styles
        self._max_text_chars = max_text_chars
        self._chars = 0
        self.blocks: list[Block] = []
        self.title: str | None = None

    def _add(self, block: Block) -> None:
        self._chars += len(block.text)
        _check_size(self._chars // 2, self._max_text_chars)
        self.blocks.append(block)

    def read(self, container: ElementTree.Element) -> None:
        for child in container:
            if child.tag == f"{_W}p":
                self._paragraph(child)
            elif child.tag == f"{_W}tbl":
                self._table(child)
            elif child.tag == f"{_W}sdt":
                gallery = child.find(f"{_W}sdtPr/{_W}docPartObj/{_W}docPartGallery")
                if gallery is not None and "contents" in gallery.get(f"{_W}val", "").lower():
                    continue  # a table of contents repeats the headings
                content = child.find(f"{_W}sdtContent")
                if content is not None:
                    self.read(content)
            elif child.tag in (f"{_W}customXml", f"{_W}ins"):
                self.read(child)

    def _paragraph(self, paragraph: ElementTree.Element) -> None:
        text = _clean(_docx_text(paragraph))
        if not text:
            return
        properties = paragraph.find(f"{_W}pPr")
        style_id = ""
        numbered = False
        list_level = 1
        outline: int | None = None
        if properties is not None:
            style = properties.find(f"{_W}pStyle")
            style_id = style.get(f"{_W}val", "") if style is not None else ""
            numbering = properties.find(f"{_W}numPr")
            if numbering is not None:
                number_id = numbering.find(f"{_W}numId")
                numbered = number_id is None or number_id.get(f"{_W}val") != "0"
                depth = numbering.find(f"{_W}ilvl")
                list_level = (_int(depth.get(f"{_W}val")) or 0) + 1 if depth is not None else 1
            outline_element = properties.find(f"{_W}outlineLvl")
            if outline_element is not None:
                outline = _int(outline_element.get(f"{_W}val"))
        if style_id and self._styles.is_toc(style_id):
            return
        level, is_title = self._styles.heading_level(style_id) if style_id else (0, False)
        if not level and outline is not None and 0 <= outline < 9:
            level = outline + 1
        if level:
            if is_title and self.title is None:
                self.title = text
            self._add(Block("heading", text, level))
        elif numbered or (style_id and self._styles.is_list(style_id)):
            self._add(Block("list_item", text, list_level))
        else:
            self._add(Block("paragraph", text))

    def _table(self, table: ElementTree.Element) -> None:
        for row in table.findall(f"{_W}tr"):
            cells = [
                _clean(" ".join(_docx_text(p) for p in cell.iter(f"{_W}p")))
                for cell in row.findall(f"{_W}tc")
            ]
            if any(cells):
                self._add(Block("table_row", " | ".join(cells)))


def _docx_text(paragraph: ElementTree.Element) -> str:
    """The visible text of a paragraph: deleted text, field codes and the
    fallback copies of drawings are not; text boxes are."""
    parts: list[str] = []

    def visit(element: ElementTree.Element) -> None:
        for child in element:
            tag = child.tag
            if tag == f"{_W}t":
                parts.append(child.text or "")
            elif tag in (f"{_W}tab", f"{_W}br", f"{_W}cr"):
                parts.append(" ")
            elif tag == f"{_W}noBreakHyphen":
                parts.append("-")
            elif tag == f"{_W}p":
                parts.append(" ")
                visit(child)
                parts.append(" ")
            elif tag not in (_MC_FALLBACK, f"{_W}del", f"{_W}pPr", f"{_W}rPr"):
                visit(child)

    visit(paragraph)
    return "".join(parts)
