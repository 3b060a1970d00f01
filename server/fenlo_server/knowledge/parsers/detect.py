"""Type detection and text decoding: magic bytes for what is binary, byte order
marks and charsets for what is text, then sniffing to tell HTML, Markdown and
plain text apart."""

from __future__ import annotations

import codecs
import re

from fenlo_server.knowledge.parsers.common import HTML, MARKDOWN, PLAIN, _newlines, _unsupported
from fenlo_server.knowledge.types import ParseError

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
            except (UnicodeError, LookupError):  # LookupError: not a text codec (base64)
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
