"""Hostile uploads: HTML whose hidden parts must stay hidden, zip bombs and XML
entity tricks in DOCX, damaged and explosive PDFs, mutated files of every kind,
and files at and over the size limits.

Every hostile file is built here, in code, and is small on the wire. Parser-level
tests call ``parse()`` (what the ingestion job runs in a thread) and measure what
it allocates with tracemalloc, to show that it stops early instead of expanding
the bomb. Server-level tests upload through the real API and check where the
document ends (FAILED with a reason a person can act on, or READY) and what is
stored and searchable afterwards.
"""

from __future__ import annotations

import asyncio
import encodings
import encodings.aliases
import http.server
import io
import pkgutil
import random
import shutil
import struct
import threading
import tracemalloc
import uuid
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from fenlo.v1 import knowledge_pb2, workspace_pb2
from fenlo_server.knowledge.parsers import (
    MAX_DOCX_DEPTH,
    MAX_HTML_DEPTH,
    MAX_PDF_CONTENT_BYTES,
    MAX_ZIP_ENTRIES,
    parse,
)
from fenlo_server.knowledge.types import ParsedDocument, ParseError
from fenlo_server.storage.models import DocumentRow, KbChunkRow, KbSectionRow
from tests.chat_helpers import ChatStream
from tests.conftest import make_settings, start_app
from tests.helpers import Api, rich_error
from tests.integration.test_knowledge import kb, search, upload, wait_done
from tests.unit.test_parsers import W_NS, make_docx, make_pdf, w_paragraph

K = knowledge_pb2
MiB = 1024 * 1024
GiB = 1024 * MiB

# ---------------------------------------------------------------- helpers


def outcome(data: bytes, **kw: Any) -> ParsedDocument | ParseError:
    try:
        return parse(data, **kw)
    except ParseError as error:
        return error


PARSE_SECONDS = 120.0  # a parse that takes longer than this is taken to hang


def bounded(call: Callable[[], Any], seconds: float = PARSE_SECONDS) -> Any:
    """``call()`` in a daemon thread, waited for at most ``seconds``: a parser that
    hangs fails the test (and cannot keep the test process alive)."""
    returned: list[Any] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            returned.append(call())
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still parsing after {seconds:.0f} s"
    if raised:
        raise raised[0]
    return returned[0]


def measured(data: bytes, **kw: Any) -> tuple[ParsedDocument | ParseError, int]:
    """What parse() returns or raises (bounded in time), and the most memory it
    held at once."""
    tracemalloc.start()
    try:
        result = bounded(lambda: outcome(data, **kw))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


def failure(result: ParsedDocument | ParseError, reason: str) -> ParseError:
    assert isinstance(result, ParseError), result
    assert result.reason == reason, (result.reason, result.message)
    assert len(result.message) > 40, result.message  # says what to do
    return result


def text_of(document: ParsedDocument | ParseError) -> str:
    assert isinstance(document, ParsedDocument), document
    return "\n".join(block.text for block in document.blocks) + f"\n{document.title}"


async def stored_text(api: Api, workspace: str) -> str:
    """Everything the workspace's knowledge base stored as text: titles, sections,
    heading paths, passages and what was embedded."""
    async with api.app.db.workspace(workspace) as session:
        rows: list[Any] = []
        for columns in (
            (DocumentRow.title, DocumentRow.failure_message),
            (KbSectionRow.text, KbSectionRow.heading_path),
            (KbChunkRow.text, KbChunkRow.embed_text),
        ):
            rows.extend((await session.execute(select(*columns))).all())
    return "\n".join(str(value) for row in rows for value in row)


async def document_count(api: Api, workspace: str) -> int:
    async with api.app.db.workspace(workspace) as session:
        return int((await session.execute(select(func.count()).select_from(DocumentRow))).scalar())


async def upload_and_wait(
    api: Api, workspace: str, token: str, data: bytes, **document: Any
) -> K.Document:
    created = await upload(api, workspace, token, data, **document)
    assert created.status == K.DOCUMENT_STATUS_PENDING
    return await wait_done(api, token, created.name)


# ---------------------------------------------------------------- HTML: hidden stays hidden

# Where a word can hide in a page: none of these is shown by a browser (or run as text).
HIDDEN_PLACES = {
    "script": '<script>var tracking = "{m}";</script>',
    "script-module": '<script type="module">import "/{m}.js";</script>',
    "script-upper-case": "<SCRIPT>{m}()</SCRIPT >",
    "style": "<style>.{m} {{ color: red }}</style>",
    "event-handler": '<p onclick="steal(\'{m}\')" onmouseover="{m}()">Click to call us.</p>',
    "javascript-url": "<p><a href=\"javascript:alert('{m}')\">Contact us</a> today.</p>",
    "iframe": '<iframe src="https://evil.example/{m}" srcdoc="{m}">{m}</iframe>',
    "noscript": "<noscript><p>{m}</p></noscript>",
    "template": "<template><p>{m}</p></template>",
    "comment": "<!-- {m} -->",
    "conditional-comment": "<!--[if IE]><p>{m}</p><![endif]-->",
    "cdata": "<![CDATA[ {m} ]]>",
    "svg-script": "<svg><script>{m}</script><title>{m}</title></svg>",
    "object": '<object data="/{m}.swf"><embed src="/{m}.swf"></object>',
    "meta-refresh": '<meta http-equiv="refresh" content="0;url=javascript:{m}">',
    "hidden-attribute": "<div hidden><p>{m}</p></div>",
    "display-none": '<div style="display: none"><p>{m}</p></div>',
    "in-a-table-cell": "<table><tr><td>Price</td><td>12<script>{m}</script></td></tr></table>",
    "in-a-list-item": "<ul><li>Free returns<script>{m}</script></li></ul>",
    "in-a-heading": "<h2>Delivery<script>{m}</script></h2>",
    "in-pre": "<pre>code<style>{m}</style></pre>",
    "unclosed-script-at-the-end": "<script>{m}",  # last: nothing closes it
}


@dataclass(frozen=True)
class Page:
    html: str
    visible: list[str]
    hidden: dict[str, str]  # place -> marker


def hostile_page(*, depth: int = 0) -> Page:
    """A page with a unique marker word in every hidden place and in visible
    paragraphs between them, the whole body nested ``depth`` divs deep."""
    tag = uuid.uuid4().hex[:6]
    hidden = {place: f"hid{place.replace('-', '')}{tag}" for place in HIDDEN_PLACES}
    visible = [f"seen{i}{tag}" for i in range(len(HIDDEN_PLACES) + 1)]
    body = [f"<p>Returns are accepted within thirty days of delivery ({visible[0]}).</p>"]
    for i, (place, template) in enumerate(HIDDEN_PLACES.items(), start=1):
        if place != "unclosed-script-at-the-end":
            body.append(template.format(m=hidden[place]))
            body.append(
                f"<p>Paragraph {i}: refunds reach the card in five days ({visible[i]}).</p>"
            )
    body.append(
        HIDDEN_PLACES["unclosed-script-at-the-end"].format(m=hidden["unclosed-script-at-the-end"])
    )
    visible.pop()  # no visible paragraph after the unclosed script
    html = (
        "<!DOCTYPE html><html><head><title>Returns and refunds</title>"
        f'<script src="/{hidden["script"]}x.js"></script></head><body><main>'
        + "<div>" * depth
        + "\n".join(body)
        + "</div>" * depth
        + "</main></body></html>"
    )
    return Page(html, visible, hidden)


@pytest.mark.parametrize("depth", [0, MAX_HTML_DEPTH + 10], ids=["shallow", "past-depth-limit"])
def test_html_keeps_visible_text_and_drops_every_hidden_place(depth: int) -> None:
    page = hostile_page(depth=depth)
    text = text_of(parse(page.html.encode(), filename="returns.html"))
    missing = [word for word in page.visible if word not in text]
    leaked = [place for place, word in page.hidden.items() if word in text]
    assert missing == [], missing
    assert leaked == [], leaked


def test_markdown_drops_raw_script_and_style_blocks_but_keeps_code() -> None:
    tag = uuid.uuid4().hex[:6]
    text = f"""# Widget guide

The visible opening says seenone{tag}.

<script>
var key = "hidblock{tag}";

steal(key); // a blank line inside the block does not end it
</script>

<style>.hidstyle{tag} {{ color: red }}</style>
The line after the style says seentwo{tag}.

Inline <script>alert("hidinline{tag}")</script> text says seenthree{tag}.

```html
<script src="/shownfence{tag}.js"></script>
```

A code span shows `<script>showncode{tag}</script>` literally.
"""
    parsed = text_of(parse(text.encode(), filename="widget.md"))
    for word in ("seenone", "seentwo", "seenthree", "shownfence", "showncode"):
        assert f"{word}{tag}" in parsed, word
    for word in ("hidblock", "hidstyle", "hidinline"):
        assert f"{word}{tag}" not in parsed, word


async def test_hidden_html_never_reaches_stored_passages_search_or_citations(
    sqlite_api: Api,
) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Shop")
    pages = [hostile_page(), hostile_page(depth=MAX_HTML_DEPTH + 10)]
    for page in pages:
        document = await upload_and_wait(
            api, workspace, token, page.html.encode(), source_uri="https://shop.example/returns"
        )
        assert document.status == K.DOCUMENT_STATUS_READY, document.failure
        assert document.detected_type == "text/html"
    stored = await stored_text(api, workspace)
    assert all(word in stored for page in pages for word in page.visible)
    assert [p for page in pages for p, word in page.hidden.items() if word in stored] == []
    for page in pages:
        assert (await search(api, workspace, token, page.visible[3])).results
        for place, word in page.hidden.items():
            found = await search(api, workspace, token, f"What is {word}?")
            shown = " ".join(
                f"{r.passage} {r.context} {r.title} {' '.join(r.heading_path)}"
                for r in found.results
            )
            assert word not in shown, place
    chat = ChatStream(api, token)
    await chat.start(parent=f"workspaces/{workspace}")
    word = pages[1].hidden["script"]
    await chat.say(f"Within how many days are returns accepted? And what is {word}?")
    turn = await chat.turn()
    cited = [
        c for e in turn.events if e.WhichOneof("kind") == "citations" for c in e.citations.citations
    ]
    assert cited, "the returns page should be cited"
    assert all(word not in f"{c.passage} {c.title} {' '.join(c.heading_path)}" for c in cited)
    chat.call.cancel()


# A declaration the standard library's HTML parser used to raise AssertionError on
# (the document then never left PROCESSING until its retries ran out).
MARKED_SECTIONS = ["<![foo[bar]]>", "<![ 1 ]>", "<![]]>", "<![", "<![if !IE]>shown<![endif]>"]


@pytest.mark.parametrize("section", MARKED_SECTIONS)
def test_html_with_an_unknown_marked_section_is_read(section: str) -> None:
    page = f"<html><body><p>Before the section.</p>{section}<p>After the section.</p></body></html>"
    text = text_of(parse(page.encode()))
    assert "Before the section." in text
    if section != "<![":  # unterminated: what follows is the rest of the declaration
        assert "After the section." in text


def codec_names() -> list[str]:
    names = set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    names |= {module.name for module in pkgutil.iter_modules(encodings.__path__)}
    return sorted(names - {"aliases"})


def test_any_charset_a_file_declares_is_read_or_refused_cleanly() -> None:
    """Every codec name Python knows, declared the three ways a file can declare
    one, on bytes that are not UTF-8: base64, zlib, rot13 and the like are not
    text encodings (they used to raise LookupError out of the parser)."""
    samples = [b"caf\xe9 \x80\x81 \xff\xfe menu", b"\x81\x8d\x8f\x90\x9d plain words"]
    bad: dict[str, str] = {}
    for name in codec_names():
        declared = name.encode()
        for data in samples:
            for how, content, mime in (
                ("mime", data, f"text/plain; charset={name}"),
                ("meta", b"<html><head><meta charset=" + declared + b"></head><body>" + data, None),
                ("xml", b'<?xml version="1.0" encoding="' + declared + b'"?><html>' + data, None),
            ):
                try:
                    parse(content, declared_mime=mime)
                except ParseError:
                    pass
                except Exception as error:
                    bad[f"{name}/{how}"] = repr(error)
    assert bad == {}


def test_a_non_text_charset_still_gives_the_text() -> None:
    document = parse(
        b"Caf\xe9 opening hours: nine to five.", declared_mime="text/plain; charset=base64"
    )
    assert text_of(document).startswith("Café opening hours")


async def test_weird_html_and_charsets_end_ready_not_stuck_processing(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Odd files")
    page = "<html>{}<body><p>Caf\xe9 hours: nine to five.</p>{}<p>Closed Sundays.</p></body></html>"
    cases = [
        (page.format("", "<![foo[x]]>").encode("latin-1"), ""),
        (b"Caf\xe9 hours are nine to five, closed on Sunday.", "text/plain; charset=base64"),
        (page.format("<head><meta charset=zlib></head>", "").encode("latin-1"), ""),
    ]
    for content, mime in cases:
        document = await upload_and_wait(api, workspace, token, content, mime_type=mime)
        assert document.status == K.DOCUMENT_STATUS_READY, (content[:40], document.failure)


# ---------------------------------------------------------------- DOCX: zip bombs


def deflated(total: int, fill: bytes, head: bytes = b"", *, wbits: int = -15) -> bytes:
    """``head`` then ``total`` bytes of ``fill``, deflated (raw, or zlib with
    ``wbits=15``) without running the compressor over all of it: one flushed MiB,
    repeated. A GiB of a short pattern is a few MB. (The zlib checksum at the end
    is wrong, but nothing should read that far.)"""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = fill * (MiB // len(fill))
    first = compressor.compress(head + block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + repeated * (total // len(block) - 1) + compressor.flush()


@dataclass(frozen=True)
class Entry:
    """A ZIP entry with whatever sizes and checksum it claims to have."""

    name: str
    stored: bytes  # the bytes in the archive, raw deflate
    file_size: int  # the uncompressed size it declares
    crc: int = 0


def entry(name: str, content: bytes) -> Entry:
    """An honest entry."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return Entry(
        name, compressor.compress(content) + compressor.flush(), len(content), zlib.crc32(content)
    )


def raw_zip(entries: list[Entry]) -> bytes:
    """A ZIP archive written by hand, so that its headers can lie."""
    out = bytearray()
    directory = bytearray()
    deflate = zipfile.ZIP_DEFLATED
    for item in entries:
        offset = len(out)
        name = item.name.encode()
        sizes = (item.crc, len(item.stored), item.file_size)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, deflate, 0, 0, *sizes, len(name), 0)
        out += name + item.stored
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, deflate, 0, 0, *sizes, len(name), 0, 0, 0, 0,
            0, offset,
        )  # fmt: skip
        directory += name
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(directory), len(out), 0
    )
    return bytes(out + directory + end)


def document_xml(body: str, *, prolog: str = "", encoding: str = "utf-8") -> bytes:
    return (
        f'<?xml version="1.0" encoding="{encoding.upper()}"?>{prolog}'
        f'<w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>'
    ).encode(encoding)


OPENING = w_paragraph("The visible opening paragraph.")
HEAD = document_xml(OPENING).removesuffix(b"</w:body></w:document>")
EMPTY_PARAGRAPH = b"<w:p/>" + b" " * 58  # 64 bytes of a paragraph that holds nothing


def bomb_entry(declared: int) -> Entry:
    """word/document.xml expanding to a GiB of empty paragraphs, declaring ``declared``."""
    return Entry("word/document.xml", deflated(GiB, EMPTY_PARAGRAPH, HEAD), declared)


ZIP_BOMBS: dict[str, tuple[Callable[[], list[Entry]], str]] = {
    # Honest about its gigabyte: refused on what it declares. Its stored bytes are
    # not even deflate, so a parser that started to read it would fail otherwise.
    "declares-a-gigabyte": (lambda: [Entry("word/document.xml", b"\x07" * 4096, GiB)], "too_large"),
    "a-real-gigabyte": (lambda: [bomb_entry(GiB + len(HEAD))], "too_large"),
    # Lies: small declared sizes. Reading stops at the declared size, where the
    # checksum does not match.
    "declares-10-kb": (lambda: [bomb_entry(10_000)], "malformed"),
    "declares-4-mib": (lambda: [bomb_entry(4 * MiB)], "malformed"),
    # Lies the other way: a tiny part that claims 4 GiB.
    "claims-4-gib": (
        lambda: [replace(entry("word/document.xml", document_xml(OPENING)), file_size=0xFFFF_FFF0)],
        "too_large",
    ),
}


@pytest.mark.parametrize("case", list(ZIP_BOMBS))
def test_docx_zip_bomb_fails_without_expanding(case: str) -> None:
    build, reason = ZIP_BOMBS[case]
    data = raw_zip(build())
    assert len(data) < 8 * MiB  # small on the wire
    result, peak = measured(data, filename="contract.docx")
    error = failure(result, reason)
    assert peak < 8 * MiB, f"{case}: held {peak / MiB:.0f} MiB"
    if reason == "too_large":
        assert "Split it" in error.message


def test_docx_parts_are_read_a_chunk_at_a_time() -> None:
    """Element-dense XML within every limit: the old reader built the whole tree
    (some 30 MB here for 1.7 MB of XML, 700 MB at the 50 MB budget); each finished
    block is now read and dropped."""
    rng = random.Random(7)
    paragraphs = "".join(f'<w:p w:rsidR="{rng.getrandbits(32):08X}"/>' for _ in range(70_000))
    data = docx_of(document_xml(paragraphs + w_paragraph("The last paragraph.")))
    result, peak = measured(data)
    assert text_of(result).startswith("The last paragraph.")
    assert peak < 8 * MiB, f"held {peak / MiB:.0f} MiB"


def docx_of(document: bytes, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", document)
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_docx_with_too_many_entries_is_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("word/document.xml", document_xml(OPENING))
        for i in range(MAX_ZIP_ENTRIES):
            archive.writestr(f"word/media/{i}.bin", b"")
    error = failure(outcome(buffer.getvalue()), "unsupported_type")
    assert f"{MAX_ZIP_ENTRIES + 1:,} files" in error.message


def test_nested_archives_are_never_opened() -> None:
    inner = docx_of(document_xml(w_paragraph("Inside the inner archive.")))
    # A document part that is itself a ZIP is not XML.
    failure(outcome(docx_of(inner)), "malformed")
    # An embedded object claiming a gigabyte (with bytes that are not deflate) is
    # never read: the document is.
    embedded = Entry("word/embeddings/oleObject1.bin", b"\x07" * 4096, GiB)
    data = raw_zip([entry("word/document.xml", document_xml(OPENING)), embedded])
    result, peak = measured(data)
    assert text_of(result).startswith("The visible opening paragraph.")
    assert peak < 4 * MiB


def test_entry_names_that_climb_out_are_harmless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    names = ["../../../../tmp/evil.xml", "/etc/evil.xml", "word/../../evil.xml", "..\\..\\evil.xml"]
    entries = [entry(name, b"<evil>climbed out</evil>") for name in names]
    # Two entries of the document part: one of them is read, never a mix.
    first = entry("word/document.xml", document_xml(w_paragraph("The first copy.")))
    second = entry("word/document.xml", document_xml(w_paragraph("The second copy.")))
    text = text_of(parse(raw_zip([*entries, first, second])))
    assert ("The first copy." in text) != ("The second copy." in text)
    assert "climbed out" not in text
    assert list(tmp_path.iterdir()) == []  # nothing was extracted anywhere near


# ---------------------------------------------------------------- DOCX: XML attacks

LAUGHS = (
    '<!DOCTYPE w:document [<!ENTITY lol0 "lol">'
    + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    + "]>"
)
PADDING = "<!--" + "a long comment that pushes the DTD far from the start " * 100 + "-->"


def laughs(encoding: str, padded: bool) -> bytes:
    return document_xml(
        w_paragraph("&lol9;"), prolog=(PADDING if padded else "") + LAUGHS, encoding=encoding
    )


@pytest.mark.parametrize(
    ("encoding", "padded"),
    [("utf-8", False), ("utf-8", True), ("utf-16", False), ("utf-16", True)],
    ids=["plain", "after-a-long-comment", "utf-16", "utf-16-after-a-comment"],
)
def test_billion_laughs_is_refused_before_any_expansion(encoding: str, padded: bool) -> None:
    """A billion laughs, with the DTD where a byte search of the first 4 KiB
    would not see it (after a comment, or in UTF-16): the old check did not, and
    only expat's own amplification limit stopped it, after some 80 MB."""
    result, peak = measured(docx_of(laughs(encoding, padded)))
    assert "declares a DTD" in failure(result, "malformed").message
    assert peak < 2 * MiB, f"held {peak / MiB:.0f} MiB"


@pytest.mark.parametrize("encoding", ["UTF-16-BE", "Shift_JIS", "x-no-such-encoding"])
def test_docx_part_in_an_encoding_expat_cannot_read_is_malformed(encoding: str) -> None:
    """expat raises ValueError or LookupError on these, not a parse error."""
    head = f'<?xml version="1.0" encoding="{encoding}"?>'
    xml = document_xml(OPENING).replace(b'<?xml version="1.0" encoding="UTF-8"?>', head.encode())
    failure(outcome(docx_of(xml)), "malformed")


def secret_file(tmp_path: Path) -> tuple[Path, str]:
    secret = f"secret{uuid.uuid4().hex}"
    path = tmp_path / "secret.txt"
    path.write_text(secret)
    return path, secret


def xxe_documents(path: Path, url: str) -> dict[str, bytes]:
    """DOCX files that try to pull a local file (or a URL) into their text."""
    general = f'<!DOCTYPE w:document [<!ENTITY x SYSTEM "file://{path}">]>'
    parameter = f'<!DOCTYPE w:document [<!ENTITY % p SYSTEM "file://{path}"> %p;]>'
    external = f'<!DOCTYPE w:document SYSTEM "{url}/doc.dtd">'
    remote = f'<!DOCTYPE w:document [<!ENTITY x SYSTEM "{url}/entity">]>'
    styles = f'<?xml version="1.0"?>{general}<w:styles xmlns:w="{W_NS}">&x;</w:styles>'
    return {
        "general-entity": docx_of(document_xml(w_paragraph("Here: &x;"), prolog=general)),
        "parameter-entity": docx_of(document_xml(OPENING, prolog=parameter)),
        "external-dtd": docx_of(document_xml(OPENING, prolog=external)),
        "remote-entity": docx_of(document_xml(w_paragraph("Here: &x;"), prolog=remote)),
        "utf-16": docx_of(
            document_xml(w_paragraph("Here: &x;"), prolog=general, encoding="utf-16")
        ),
        "in-styles": docx_of(document_xml(OPENING), {"word/styles.xml": styles.encode()}),
        "in-core-properties": docx_of(
            document_xml(OPENING), {"docProps/core.xml": styles.replace("w:styles", "cp").encode()}
        ),
    }


@contextmanager
def http_trap() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request it gets."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'<!ENTITY x "fetched">')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_external_entities_and_dtds_are_refused_and_never_fetched(tmp_path: Path) -> None:
    path, secret = secret_file(tmp_path)
    with http_trap() as (url, requests):
        for case, data in xxe_documents(path, url).items():
            error = failure(outcome(data), "malformed")
            assert "declares a DTD" in error.message, case
            assert secret not in error.message, case
        html = (
            f'<!DOCTYPE html SYSTEM "{url}/html.dtd"><html><head>'
            f'<link rel="stylesheet" href="{url}/style.css"><script src="{url}/x.js"></script>'
            f'</head><body><p>Visible text.</p><img src="{url}/i.png">'
            f'<iframe src="{url}/frame"></iframe><object data="{url}/o"></object></body></html>'
        )
        assert text_of(parse(html.encode())).startswith("Visible text.")
        assert requests == []


def test_deeply_nested_docx_is_read_without_recursion_errors() -> None:
    """Elements nested thousands deep inside a paragraph, and content controls
    nested thousands deep in the body, used to raise RecursionError (not a
    ParseError: the document then sat in PROCESSING)."""
    deep = MAX_DOCX_DEPTH * 30
    runs = "<w:p>" + "<w:r>" * deep + "<w:t>deep</w:t>" + "</w:r>" * deep + "</w:p>"
    controls = (
        "<w:sdt><w:sdtContent>" * deep + w_paragraph("deeper") + "</w:sdtContent></w:sdt>" * deep
    )
    for body in (runs, controls):
        document = parse(docx_of(document_xml(body + w_paragraph("Shallow text."))))
        assert text_of(document).startswith("Shallow text.")


async def test_docx_bombs_and_entity_tricks_end_failed_with_nothing_stored(
    sqlite_api: Api, tmp_path: Path
) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Contracts")
    path, secret = secret_file(tmp_path)
    cases = {
        "zip-bomb": (raw_zip([bomb_entry(GiB + len(HEAD))]), K.DOCUMENT_FAILURE_REASON_TOO_LARGE),
        "lying-sizes": (raw_zip([bomb_entry(10_000)]), K.DOCUMENT_FAILURE_REASON_MALFORMED),
        "billion-laughs": (docx_of(laughs("utf-16", True)), K.DOCUMENT_FAILURE_REASON_MALFORMED),
        "xxe": (
            xxe_documents(path, "http://127.0.0.1:9")["general-entity"],
            K.DOCUMENT_FAILURE_REASON_MALFORMED,
        ),
    }
    for case, (data, reason) in cases.items():
        document = await upload_and_wait(api, workspace, token, data, source_uri=f"{case}.docx")
        assert document.status == K.DOCUMENT_STATUS_FAILED, case
        assert document.failure.reason == reason, (case, document.failure)
        assert len(document.failure.message) > 40, case
        assert secret not in document.failure.message
    assert secret not in await stored_text(api, workspace)
    assert (await search(api, workspace, token, "visible opening paragraph")).results == []


# ---------------------------------------------------------------- PDF: damaged and explosive


def pdf_file(objects: dict[int, bytes], *, version: bytes = b"1.7") -> bytes:
    """A PDF of these numbered objects (gaps are null; 1 is the catalog) with a
    correct cross-reference table."""
    out = bytearray(b"%PDF-" + version + b"\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number in range(1, max(objects) + 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, objects.get(number, b"null"))
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(offsets) + 1)
    return bytes(out + b"startxref\n%d\n%%%%EOF\n" % xref)


def pdf_of(contents: list[bytes], objects: dict[int, bytes], *, resources: bytes = b"") -> bytes:
    """Pages with these /Contents (such as ``b"100 0 R"``); 1 is the catalog, 2 the
    page tree, 3 the font, the pages follow from 4, ``objects`` are from 100."""
    pages = {
        4 + i: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> %s >> /Contents %s >>" % (resources, content)
        for i, content in enumerate(contents)
    }
    kids = b" ".join(b"%d 0 R" % number for number in pages)
    return pdf_file(
        {
            1: b"<< /Type /Catalog /Pages 2 0 R >>",
            2: b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages)),
            3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            **pages,
            **objects,
        }
    )


def stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n%s\nendstream" % (len(data), entries, data)


def flate(data: bytes, entries: bytes = b"") -> bytes:
    return stream(zlib.compress(data, 9), b"/Filter /FlateDecode " + entries)


LINE = b"BT /F1 12 Tf 72 700 Td (The visible opening line.) Tj ET\n"
FORM = b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >>"


def instructions(size: int) -> bytes:
    """A line of text, then ``size`` bytes of drawing instructions: an inline grey
    image, the quickest kind for pypdf to parse."""
    return LINE + b"BI /W 1 /H 1 /BPC 8 /CS /G ID\n" + b"\x00" * size + b"\nEI\n"


JUST_OVER_HALF = MAX_PDF_CONTENT_BYTES // 2 + MiB  # two uses of it exceed the budget

PDF_BOMBS: dict[str, Callable[[], bytes]] = {
    # One stream inflating to a gigabyte: decoding stops at the budget.
    "flate-gigabyte": lambda: pdf_of(
        [b"100 0 R"], {100: stream(deflated(GiB, b"\x00", LINE, wbits=15), b"/Filter /FlateDecode")}
    ),
    # A stream counted at every use: three times in a page's contents, ...
    "contents-array-repeats-a-stream": lambda: pdf_of(
        [b"[100 0 R 100 0 R 100 0 R]"], {100: flate(instructions(MAX_PDF_CONTENT_BYTES // 3 + MiB))}
    ),
    # ... on every page that draws it, ...
    "stream-shared-by-pages": lambda: pdf_of(
        [b"100 0 R", b"100 0 R"], {100: flate(instructions(JUST_OVER_HALF))}
    ),
    # ... and at each use of a form, nested too: the page draws form A a thousand
    # times, A draws B, B is big. (The budget runs out inside A, where pypdf
    # swallows errors: it must still stop.)
    "form-drawn-a-thousand-times": lambda: pdf_of(
        [b"100 0 R"],
        {
            100: stream(b"/A Do\n" * 1000),
            101: stream(b"/B Do\n", FORM + b" /XObject << /B 102 0 R >> >>"),
            102: flate(instructions(JUST_OVER_HALF), FORM + b" >>"),
        },
        resources=b"/XObject << /A 101 0 R >>",
    ),
}


@pytest.mark.parametrize("case", list(PDF_BOMBS))
def test_pdf_bomb_fails_as_too_large_within_the_budget(case: str) -> None:
    """Before the budget, each of these was a few KB to 3 MB of file costing up to
    hours of parsing (pypdf decodes a stream once, but parses it at every use,
    and let one stream inflate to 75 MB) and gigabytes of memory."""
    data = PDF_BOMBS[case]()
    assert len(data) < 4 * MiB
    result, peak = measured(data, filename="bomb.pdf")
    assert "drawing instructions" in failure(result, "too_large").message
    assert peak < 3 * MAX_PDF_CONTENT_BYTES, f"held {peak / MiB:.0f} MiB"


def object_stream_pdf() -> bytes:
    """PDF 1.5: the page inside an object stream that extends, and contains, itself."""
    text = b"BT /F1 12 Tf 72 700 Td (Inside an object stream.) Tj ET"
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> >> /Contents 7 0 R >>"
    )
    header = b"4 0 5 %d " % (len(page) + 1)
    members = header + page + b" 5 0 R "
    plain = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        5: b"<< /Type /ObjStm /N 2 /First %d /Extends 5 0 R /Length %d >>\nstream\n%s\nendstream"
        % (len(header), len(members), members),
        7: stream(text),
    }
    out = bytearray(b"%PDF-1.5\n")
    offsets: dict[int, int] = {}
    for number, body in plain.items():
        offsets[number] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    rows = struct.pack(">BIH", 0, 0, 65535)
    for number in range(1, 9):
        kind, field = (1, offsets[number]) if number in offsets else (0, 0)
        if number == 4:
            kind, field = 2, 5  # in object stream 5
        if number == 8:
            kind, field = 1, xref_at
        rows += struct.pack(">BIH", kind, field, 0)
    xref = stream(rows, b"/Type /XRef /Size 9 /W [1 4 2] /Root 1 0 R")
    return bytes(out + b"8 0 obj\n%s\nendobj\nstartxref\n%d\n%%%%EOF\n" % (xref, xref_at))


def damaged_pdfs() -> dict[str, bytes]:
    valid = pdf_of([b"100 0 R"], {100: stream(LINE)})
    xref = valid.rindex(b"xref")
    rng = random.Random(3)
    return {
        "truncated-in-the-header": valid[:12],
        "truncated-mid-object": valid[: len(valid) // 2],
        "truncated-before-the-xref": valid[:xref],
        "truncated-before-eof": valid[:-6],
        "random-bytes-after-the-header": b"%PDF-1.7\n" + rng.randbytes(64 * 1024),
        "broken-xref": valid[:xref] + b"xref\n0 9\ngarbage garbage\n" + valid[xref + 40 :],
        "startxref-past-the-end": valid.replace(b"startxref\n%d" % xref, b"startxref\n99999999"),
        "huge-declared-length": pdf_of(
            [b"100 0 R"], {100: b"<< /Length 99999999999 >>\nstream\n" + LINE + b"\nendstream"}
        ),
        "length-refers-to-itself": pdf_of(
            [b"100 0 R"], {100: b"<< /Length 100 0 R >>\nstream\n" + LINE + b"\nendstream"}
        ),
        "contents-refers-to-itself": pdf_of([b"100 0 R"], {100: b"100 0 R"}),
        "page-tree-contains-itself": valid.replace(b"/Kids [4 0 R]", b"/Kids [2 0 R 4 0 R 2 0 R]"),
        "form-draws-itself": pdf_of(
            [b"100 0 R"],
            {
                100: stream(b"/A Do\n" + LINE),
                101: stream(b"/A Do\n", FORM + b" /XObject << /A 101 0 R >> >>"),
            },
            resources=b"/XObject << /A 101 0 R >>",
        ),
        "object-stream-extends-itself": object_stream_pdf(),
        "flate-stream-that-is-not-deflate": pdf_of(
            [b"100 0 R"], {100: stream(b"\x07" * 50_000, b"/Filter /FlateDecode")}
        ),
    }


@pytest.mark.parametrize("case", list(damaged_pdfs()))
def test_damaged_pdf_is_read_or_malformed(case: str) -> None:
    result = bounded(lambda: outcome(damaged_pdfs()[case], filename="damaged.pdf"))
    if isinstance(result, ParseError):
        assert result.reason in ("malformed", "empty_text"), (case, result.reason)
        assert len(result.message) > 40
    else:  # pypdf recovered what it could: the text is the page's
        assert "The visible opening line." in text_of(result) or "object stream" in text_of(result)


async def test_pdf_bombs_and_damage_end_failed_through_the_server(sqlite_api: Api) -> None:
    api = sqlite_api
    workspace, token = await api.create_workspace("Papers")
    cases = {
        "bomb.pdf": (
            PDF_BOMBS["form-drawn-a-thousand-times"](),
            K.DOCUMENT_FAILURE_REASON_TOO_LARGE,
        ),
        "flate.pdf": (PDF_BOMBS["flate-gigabyte"](), K.DOCUMENT_FAILURE_REASON_TOO_LARGE),
        "noise.pdf": (
            damaged_pdfs()["random-bytes-after-the-header"],
            K.DOCUMENT_FAILURE_REASON_MALFORMED,
        ),
    }
    for name, (data, reason) in cases.items():
        document = await upload_and_wait(api, workspace, token, data, source_uri=name)
        assert document.status == K.DOCUMENT_STATUS_FAILED, name
        assert document.failure.reason == reason, (name, document.failure)
        assert len(document.failure.message) > 40
    assert (await search(api, workspace, token, "visible opening line")).results == []


# ---------------------------------------------------------------- every format, mutated

MARKDOWN_SEED = b"""# Opening hours

We open at **nine** and close at [six](https://example.com/hours).

- Cash is *not* accepted
- Cards are

| Day | Hours |
|-----|-------|
| Mon | 9-6   |

```python
print("code")
```
"""


def seeds() -> dict[str, bytes]:
    return {
        "pdf": make_pdf([["Opening Hours", "We open at nine."], ["Delivery", "In two days."]]),
        "docx": make_docx(w_paragraph("Hours", "berschrift1") + w_paragraph("We open at nine.")),
        "docx-xml": document_xml(w_paragraph("Hours", "berschrift1") + w_paragraph("At nine.")),
        "html": hostile_page().html.encode(),
        "markdown": MARKDOWN_SEED,
    }


SEEDS = seeds()
TOKENS = [
    b"<![x[",
    b'<!DOCTYPE x [<!ENTITY e "e">]>',
    b"&e;",
    b'<?xml version="1.0" encoding="shift_jis"?>',
    b"\x00",
    b"\xff\xfe",
    b"<",
    b"]]>",
    b"&#99999999;",
    b"<script>",
    b"<w:p><w:r><w:t>",
    b"obj",
    b" 0 R",
    b"stream\n",
    b"endstream",
    b"<<",
    b">>",
    b"/FlateDecode",
    b"%PDF-1.7",
    b"PK\x03\x04",
]
POSITION = st.floats(0, 1, exclude_max=True)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), POSITION, st.integers(0, 7)),
    st.tuples(st.just("truncate"), POSITION),
    st.tuples(st.just("splice"), POSITION, POSITION, POSITION),
    st.tuples(st.just("insert"), POSITION, st.sampled_from(TOKENS)),
    st.tuples(st.just("repeat"), POSITION, st.integers(2, 200)),
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    out = bytearray(data)
    for kind, *args in mutations:
        at = int(args[0] * len(out)) if out else 0
        if kind == "flip" and out:
            out[at] ^= 1 << args[1]
        elif kind == "truncate":
            del out[at:]
        elif kind == "splice" and out:
            start, end = sorted(int(p * len(out)) for p in args[1:])
            out[at:at] = out[start:end]
        elif kind == "insert":
            out[at:at] = args[1]
        elif kind == "repeat" and out:
            out[at:at] = out[at : at + 16] * args[1]
    return bytes(out)


REASONS = {"unsupported_type", "empty_text", "encrypted", "too_large", "malformed"}


@given(kind=st.sampled_from(sorted(SEEDS)), mutations=st.lists(MUTATION, min_size=1, max_size=4))
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_files_parse_or_fail_cleanly(kind: str, mutations: list[tuple[Any, ...]]) -> None:
    """Bit flips, truncation, splices, repeats and hostile tokens in a valid PDF,
    DOCX (the archive, or its XML before zipping), HTML and Markdown file: parse()
    returns text or raises ParseError with a known reason, within the time bound;
    never another exception (which would leave the document PROCESSING)."""
    data = mutate(SEEDS[kind], mutations)
    if kind == "docx-xml":
        data = docx_of(data)
    result = bounded(lambda: outcome(data, filename=f"file.{kind}"), seconds=60)
    if isinstance(result, ParseError):
        assert result.reason in REASONS and result.message, result
    else:
        assert result.blocks and all(block.text.strip() for block in result.blocks)


# ---------------------------------------------------------------- files over the limits


async def small_workspace(api: Api, limit: int) -> tuple[str, str]:
    return await api.create_workspace(
        "Small", quotas=workspace_pb2.WorkspaceQuotas(max_document_bytes=limit)
    )


async def assert_too_large(call: Any) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "DOCUMENT_TOO_LARGE")
    assert [quota for _, quota in error.quota_violations] == ["max_document_bytes"]


async def test_uploads_at_the_limit_pass_and_one_byte_over_is_refused(sqlite_api: Api) -> None:
    api = sqlite_api
    limit = 10_000
    workspace, token = await small_workspace(api, limit)
    at_limit = await upload(api, workspace, token, b"a" * limit, source_uri="exact.txt")
    assert at_limit.size_bytes == limit
    await assert_too_large(upload(api, workspace, token, b"a" * (limit + 1), chunk_size=4096))
    # ImportText counts UTF-8 bytes: 5,000 "é" are 10,000 bytes.
    parent = f"workspaces/{workspace}"
    imported = await kb(api).ImportText(
        K.ImportTextRequest(parent=parent, text="é" * (limit // 2)), metadata=api.md(token)
    )
    assert imported.size_bytes == limit
    await assert_too_large(
        kb(api).ImportText(
            K.ImportTextRequest(parent=parent, text="é" * (limit // 2) + "e"),
            metadata=api.md(token),
        )
    )
    # Only the two documents at the limit exist, in storage and through the API.
    assert await document_count(api, workspace) == 2
    listed = await kb(api).ListDocuments(
        K.ListDocumentsRequest(parent=parent), metadata=api.md(token)
    )
    assert sorted(d.name for d in listed.documents) == sorted([at_limit.name, imported.name])


async def test_an_endless_upload_is_cut_off_at_the_limit(sqlite_api: Api) -> None:
    """A client that never stops sending: the server refuses as soon as the
    bytes pass the limit and stops reading, instead of buffering forever."""
    api = sqlite_api
    workspace, token = await small_workspace(api, 10_000)
    pulled = 0

    async def endless() -> AsyncIterator[K.UploadDocumentRequest]:
        nonlocal pulled
        yield K.UploadDocumentRequest(metadata=K.DocumentMetadata(parent=f"workspaces/{workspace}"))
        while True:
            pulled += 1
            yield K.UploadDocumentRequest(chunk=b"x" * 1024)

    call = kb(api).UploadDocument(endless(), metadata=api.md(token), timeout=30)
    await assert_too_large(call)
    seen = pulled
    await asyncio.sleep(0.3)
    assert pulled == seen, f"the client's stream was still being read ({seen} -> {pulled})"
    # 10 chunks, and what HTTP/2 flow control let the client buffer: at most one
    # window, which gRPC's bandwidth probing grows up to 4 MiB on a busy machine.
    assert seen < 5000, seen
    assert await document_count(api, workspace) == 0


@asynccontextmanager
async def server_with(
    tmp_path: Path, sqlite_template: Path, **overrides: Any
) -> AsyncIterator[Api]:
    directory = tmp_path / "custom"
    directory.mkdir()
    shutil.copy(sqlite_template, directory / "fenlo.db")
    settings = make_settings(tmp_path, f"sqlite+aiosqlite:///{directory / 'fenlo.db'}", **overrides)
    app = await start_app(settings)
    try:
        async with Api(app) as api:
            yield api
    finally:
        await app.stop(grace=0)


async def test_a_chunk_over_the_message_limit_is_refused_by_grpc(
    tmp_path: Path, sqlite_template: Path
) -> None:
    limit = 64 * 1024
    async with server_with(tmp_path, sqlite_template, max_receive_message_bytes=limit) as api:
        workspace, token = await api.create_workspace("Chunks")
        content = b"Opening hours are nine to five. " * 8192  # 256 KiB
        with pytest.raises(aio.AioRpcError) as caught:
            await upload(api, workspace, token, content, chunk_size=limit)
        # gRPC refuses the message itself, before any handler: no rich status.
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in (caught.value.details() or "")
        assert await document_count(api, workspace) == 0
        # The same bytes in chunks under the limit are a document.
        created = await upload(api, workspace, token, content, chunk_size=limit - 1024)
        assert created.size_bytes == len(content)
        assert await document_count(api, workspace) == 1
