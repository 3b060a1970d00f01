"""What every format shares: the detected types, the limits on hostile input, the
errors for what cannot be read, and text normalisation."""

from __future__ import annotations

import re
import textwrap
import unicodedata

from fenlo_server.knowledge.types import ParseError

PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

MAX_PDF_PAGES = 2_000
MAX_PDF_CONTENT_BYTES = 64 * 1024 * 1024  # drawing instructions parsed, all pages together
MAX_DOCX_XML_BYTES = 50 * 1024 * 1024  # the XML parts read, uncompressed, together
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of a part over 1 MiB
MAX_ZIP_ENTRIES = 10_000
MAX_DOCX_DEPTH = 100  # deeper DOCX elements are skipped
MAX_HTML_DEPTH = 200  # deeper elements are flattened into their ancestor
MAX_TITLE_CHARS = 300

SUPPORTED = "plain text, Markdown, HTML, PDF or DOCX"


def _check_size(chars: int, max_text_chars: int) -> None:
    if chars > max_text_chars:
        raise ParseError(
            "too_large",
            f"The document has more than {max_text_chars:,} characters of text, the limit. "
            "Split it into smaller documents and upload them separately.",
        )


def _unsupported(what: str) -> ParseError:
    return ParseError(
        "unsupported_type",
        f"This file looks like {what}, which is not supported. "
        f"Upload {SUPPORTED}, or convert the file to one of these first.",
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


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
