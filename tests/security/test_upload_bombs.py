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

import encodings
import encodings.aliases
import pkgutil
import tracemalloc
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from fenlo.v1 import knowledge_pb2
from fenlo_server.knowledge.parsers import (
    MAX_HTML_DEPTH,
    parse,
)
from fenlo_server.knowledge.types import ParsedDocument, ParseError
from fenlo_server.storage.models import DocumentRow, KbChunkRow, KbSectionRow
from tests.chat_helpers import ChatStream
from tests.helpers import Api
from tests.integration.test_knowledge import search, upload, wait_done

K = knowledge_pb2
MiB = 1024 * 1024
GiB = 1024 * MiB

# ---------------------------------------------------------------- helpers


def outcome(data: bytes, **kw: Any) -> ParsedDocument | ParseError:
    try:
        return parse(data, **kw)
    except ParseError as error:
        return error


def measured(data: bytes, **kw: Any) -> tuple[ParsedDocument | ParseError, int]:
    """What parse() returns or raises, and the most memory it held at once."""
    tracemalloc.start()
    try:
        result = outcome(data, **kw)
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
