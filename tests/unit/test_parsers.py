"""parse(): real files built in code (PDF by hand and through pypdf, DOCX as a ZIP of
XML), real parsing, no mocks."""

from __future__ import annotations

import codecs
import io
import zipfile

import pytest
from pypdf import PdfReader, PdfWriter

from fenlo_server.knowledge.parsers import DOCX, HTML, MARKDOWN, PDF, PLAIN, parse
from fenlo_server.knowledge.types import Block, ParsedDocument, ParseError

# --- builders -------------------------------------------------------------------


def make_pdf(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text line per entry, 14pt apart; an empty
    page list entry makes a page that only draws a rectangle (no text at all)."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, filled in below
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    kids: list[str] = []
    for lines in pages:
        if lines:
            ops = ["BT", "/F1 11 Tf", "14 TL", "72 740 Td"]
            for line in lines:
                escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
                ops.append(f"({escaped}) Tj T*")
            ops.append("ET")
        else:
            ops = ["0.5 g", "72 72 300 300 re f"]
        stream = "\n".join(ops).encode("cp1252")
        page_number = len(objects) + 1
        kids.append(f"{page_number} 0 R")
        objects.append(
            (
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_number + 1} 0 R >>"
            ).encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    info = ""
    if title is not None:
        objects.append(f"<< /Title ({title}) /Producer (hand) >>".encode())
        info = f" /Info {len(objects)} 0 R"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\n".encode()
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


SHOP_PDF_PAGES = [
    [
        "Opening Hours",
        "Our shop opens at nine in the morning on week-",
        "days and closes at six in the evening. On Satur-",
        "days we open at ten.",
        "Returns",
        "You can return any item within thirty days.",
    ],
    ["Delivery", "We deliver to every town in the region within two working days."],
]


def encrypt_pdf(data: bytes, user_password: str, owner_password: str | None = None) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
MC_NS = "http://schemas.openxmlformats.org/markup-compatibility/2006"

CONTENT_TYPES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/word/document.xml"
 ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/>
</Types>"""

RELS = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">
<Relationship Id="rId1" Target="word/document.xml"
 Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/>
</Relationships>"""

STYLES = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:styles xmlns:w="{W_NS}">
<w:style w:type="paragraph" w:styleId="Normal"><w:name w:val="Normal"/></w:style>
<w:style w:type="paragraph" w:styleId="Titel"><w:name w:val="Title"/></w:style>
<w:style w:type="paragraph" w:styleId="berschrift1"><w:name w:val="heading 1"/></w:style>
<w:style w:type="paragraph" w:styleId="berschrift2"><w:name w:val="heading 2"/></w:style>
<w:style w:type="paragraph" w:styleId="FancyHeading"><w:name w:val="Fancy"/>
  <w:basedOn w:val="berschrift2"/></w:style>
<w:style w:type="paragraph" w:styleId="Verzeichnis1"><w:name w:val="toc 1"/></w:style>
</w:styles>"""


def w_paragraph(text: str, style: str | None = None, numbered_level: int | None = None) -> str:
    properties = ""
    if style or numbered_level is not None:
        style_xml = f'<w:pStyle w:val="{style}"/>' if style else ""
        numbering = (
            f'<w:numPr><w:ilvl w:val="{numbered_level}"/><w:numId w:val="3"/></w:numPr>'
            if numbered_level is not None
            else ""
        )
        properties = f"<w:pPr>{style_xml}{numbering}</w:pPr>"
    return f'<w:p>{properties}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'


def w_table(rows: list[list[str]]) -> str:
    cells = "".join(
        "<w:tr>" + "".join(f"<w:tc>{w_paragraph(cell)}</w:tc>" for cell in row) + "</w:tr>"
        for row in rows
    )
    return f"<w:tbl>{cells}</w:tbl>"


def make_docx(
    body: str, *, styles: str | None = STYLES, extra: dict[str, bytes] | None = None
) -> bytes:
    document = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        f'<w:document xmlns:w="{W_NS}" xmlns:mc="{MC_NS}"><w:body>{body}'
        "<w:sectPr/></w:body></w:document>"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", CONTENT_TYPES)
        archive.writestr("_rels/.rels", RELS)
        archive.writestr("word/document.xml", document)
        if styles is not None:
            archive.writestr("word/styles.xml", styles)
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def texts(document: ParsedDocument) -> list[tuple[str, str, int]]:
    return [(block.kind, block.text, block.level) for block in document.blocks]


def all_text(document: ParsedDocument) -> str:
    return "\n".join(block.text for block in document.blocks)


def assert_normalised(blocks: list[Block]) -> None:
    assert blocks
    for block in blocks:
        assert block.text.strip()
        if block.kind == "code":  # lines and indentation kept, no blank lines at the ends
            assert block.text.strip("\n") == block.text
        else:
            assert " ".join(block.text.split()) == block.text


def parse_error(data: bytes, **kwargs: object) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse(data, **kwargs)  # type: ignore[arg-type]
    assert caught.value.message == str(caught.value)
    return caught.value


# --- PDF --------------------------------------------------------------------------


def test_pdf_text_comes_out_in_paragraphs_with_headings_and_mended_hyphens() -> None:
    document = parse(make_pdf(SHOP_PDF_PAGES, title="Shop Guide"), filename="guide.pdf")

    assert document.detected_type == PDF
    assert document.title == "Shop Guide"
    assert texts(document) == [
        ("heading", "Opening Hours", 2),
        (
            "paragraph",
            "Our shop opens at nine in the morning on weekdays and closes at six in the "
            "evening. On Saturdays we open at ten.",
            0,
        ),
        ("heading", "Returns", 2),
        ("paragraph", "You can return any item within thirty days.", 0),
        ("heading", "Delivery", 2),
        ("paragraph", "We deliver to every town in the region within two working days.", 0),
    ]
    assert_normalised(document.blocks)


def test_pdf_drops_running_headers_and_page_numbers_and_joins_paragraphs_across_pages() -> None:
    bodies = [
        ["Holidays are booked through the portal and approved by your", "manager or"],
        ["team lead, who replies the same day."],
        ["Sick days are reported by phone before nine in the morning."],
        ["Expenses are paid back with the next salary."],
    ]
    pages = [
        ["ACME Staff Handbook", *body, f"Page {number} of 4"]
        for number, body in enumerate(bodies, start=1)
    ]

    document = parse(make_pdf(pages))

    text = all_text(document)
    assert "ACME Staff Handbook" not in text
    assert "Page" not in text
    assert "approved by your manager or team lead, who replies the same day." in text
    assert "Expenses are paid back with the next salary." in text


def test_pdf_with_a_user_password_is_encrypted() -> None:
    locked = encrypt_pdf(make_pdf(SHOP_PDF_PAGES), "secret")

    error = parse_error(locked)

    assert error.reason == "encrypted"
    assert "password" in error.message and "upload it again" in error.message


def test_pdf_with_only_an_owner_password_is_read() -> None:
    restricted = encrypt_pdf(make_pdf(SHOP_PDF_PAGES), "", "owner-secret")
    assert PdfReader(io.BytesIO(restricted)).is_encrypted

    document = parse(restricted)

    assert "within thirty days" in all_text(document)


@pytest.mark.parametrize("keep", [0.5, 0.2, 0.05])
def test_truncated_pdf_is_malformed(keep: float) -> None:
    data = make_pdf(SHOP_PDF_PAGES)

    error = parse_error(data[: int(len(data) * keep)])

    assert error.reason == "malformed"
    assert "save or export it again" in error.message


def test_pdf_of_images_only_is_empty_text() -> None:
    error = parse_error(make_pdf([[], []]))

    assert error.reason == "empty_text"
    assert "selectable text" in error.message


def test_pdf_text_over_the_limit_is_too_large() -> None:
    line = "Every line of this page is a full sentence about the shop and its hours."
    data = make_pdf([[line] * 40 for _ in range(5)])

    error = parse_error(data, max_text_chars=5_000)

    assert error.reason == "too_large"
    assert "Split it" in error.message


# --- DOCX -------------------------------------------------------------------------


def test_docx_headings_lists_and_tables_become_blocks() -> None:
    body = "".join(
        [
            w_paragraph("Returns Handbook", "Titel"),
            # A table of contents repeats the headings: skipped.
            w_paragraph("Returns 1", "Verzeichnis1"),
            w_paragraph("Returns", "berschrift1"),
            w_paragraph("You can return   any item within thirty days."),
            w_paragraph("Keep the receipt", numbered_level=0),
            w_paragraph("or the order number", numbered_level=1),
            w_paragraph("Refunds", "FancyHeading"),
            w_table([["Item", "Refund"], ["Shoes", "Full"], ["", ""]]),
            # Deleted text and field codes are not visible text.
            '<w:p><w:r><w:t>Visible</w:t></w:r><w:del w:id="1"><w:r><w:delText>gone</w:delText>'
            "</w:r></w:del><w:r><w:instrText> PAGE </w:instrText></w:r></w:p>",
            # A drawing's fallback copy repeats its text box: only one copy is read.
            f'<w:p><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:txbxContent>'
            f"{w_paragraph('Boxed note')}</w:txbxContent></mc:Choice><mc:Fallback><w:txbxContent>"
            f"{w_paragraph('Boxed note')}</w:txbxContent></mc:Fallback></mc:AlternateContent>"
            f"</w:r></w:p>",
        ]
    )

    document = parse(make_docx(body), filename="handbook.docx")

    assert document.detected_type == DOCX
    assert document.title == "Returns Handbook"
    assert texts(document) == [
        ("heading", "Returns Handbook", 1),
        ("heading", "Returns", 1),
        ("paragraph", "You can return any item within thirty days.", 0),
        ("list_item", "Keep the receipt", 1),
        ("list_item", "or the order number", 2),
        ("heading", "Refunds", 2),
        ("table_row", "Item | Refund", 0),
        ("table_row", "Shoes | Full", 0),
        ("paragraph", "Visible", 0),
        ("paragraph", "Boxed note", 0),
    ]


def test_docx_without_styles_part_recognises_heading_style_ids() -> None:
    body = w_paragraph("Delivery", "Heading2") + w_paragraph("We deliver in two days.")
    core = (
        '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
        'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        "<dc:title>Delivery terms</dc:title></cp:coreProperties>"
    )

    document = parse(make_docx(body, styles=None, extra={"docProps/core.xml": core.encode()}))

    assert texts(document) == [
        ("heading", "Delivery", 2),
        ("paragraph", "We deliver in two days.", 0),
    ]
    assert document.title == "Delivery terms"


def test_docx_that_expands_past_the_limit_is_too_large() -> None:
    # 60 MB of spaces compress to about 60 kB: a zip bomb by size and by ratio.
    padding = b" " * (60 * 1024 * 1024)
    body = w_paragraph("Hello").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"<w:document>" + padding + body)

    error = parse_error(buffer.getvalue())

    assert error.reason == "too_large"
    assert "Split it" in error.message


def test_docx_part_with_an_extreme_compression_ratio_is_refused() -> None:
    padding = " " * (4 * 1024 * 1024)  # under the size limit, but ~1000:1
    data = make_docx(padding + w_paragraph("Hello"))

    error = parse_error(data)

    assert error.reason == "too_large"


def test_docx_with_a_dtd_is_malformed() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "word/document.xml",
            '<?xml version="1.0"?><!DOCTYPE w [<!ENTITY a "aaaaaaaa">]><w>&a;</w>',
        )

    assert parse_error(buffer.getvalue()).reason == "malformed"


def test_password_protected_office_file_is_encrypted_and_legacy_doc_unsupported() -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504
    protected = ole + "EncryptionInfo".encode("utf-16-le") + b"\x00" * 64
    legacy = ole + "WordDocument".encode("utf-16-le") + b"\x00" * 64

    encrypted = parse_error(protected, filename="contract.docx")
    unsupported = parse_error(legacy, filename="contract.doc")

    assert encrypted.reason == "encrypted"
    assert "Remove the password" in encrypted.message
    assert unsupported.reason == "unsupported_type"
    assert "save it as DOCX or PDF" in unsupported.message


def test_other_zip_files_are_unsupported() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    spreadsheet = buffer.getvalue()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")

    assert "spreadsheet" in parse_error(spreadsheet).message
    assert parse_error(buffer.getvalue()).reason == "unsupported_type"
    assert parse_error(b"PK\x03\x04 this is not really a zip").reason == "malformed"


# --- HTML -------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en"><head><title>Returns &amp; refunds | Acme</title>
<style>.x { color: red }</style><script>var tracking = "SCRIPT-TEXT";</script></head>
<body>
<a class="skip-link" href="#main">Skip to content</a>
<header class="site-header"><div class="logo">HEADER-TEXT</div>
  <nav><ul><li><a href="/">NAV-HOME</a></li><li><a href="/shop">NAV-SHOP</a></li></ul></nav>
</header>
<div id="cookie-banner" class="cookieConsent">COOKIE-TEXT <button>Accept</button></div>
<div class="page has-sidebar">
  <aside class="widget">ASIDE-TEXT</aside>
  <div class="breadcrumbs">Home &gt; BREADCRUMB-TEXT</div>
  <main id="main">
    <article>
      <header class="entry-header"><h1>Returns   policy</h1></header>
      <p>You can return items within <strong>30</strong>&nbsp;days
         of delivery.</p>
      <div>Refunds are paid to the original card.<br><br>Gift cards are refunded as credit.</div>
      <h2>What you need</h2>
      <ul>
        <li>The receipt
          <ul><li>or the order number</li></ul>
        </li>
        <li>The item, <em>unused</em></li>
      </ul>
      <table>
        <tr><th>Item</th><th>Days</th></tr>
        <tr><td>Shoes</td><td>30</td></tr>
      </table>
      <pre><code>POST /returns
  {"order": 42}</code></pre>
      <p hidden>HIDDEN-TEXT</p>
      <noscript>NOSCRIPT-TEXT</noscript>
      <form><label>FORM-TEXT</label><input name="q"></form>
      <footer class="entry-footer">ENTRY-FOOTER-TEXT</footer>
    </article>
  </main>
  <div class="sidebar">SIDEBAR-TEXT</div>
</div>
<footer><p>FOOTER-TEXT</p></footer>
<script>document.write("MORE-SCRIPT")</script>
</body></html>"""

BOILERPLATE = [
    "SCRIPT-TEXT",
    "HEADER-TEXT",
    "NAV-HOME",
    "NAV-SHOP",
    "COOKIE-TEXT",
    "Accept",
    "ASIDE-TEXT",
    "BREADCRUMB-TEXT",
    "HIDDEN-TEXT",
    "NOSCRIPT-TEXT",
    "FORM-TEXT",
    "ENTRY-FOOTER-TEXT",
    "SIDEBAR-TEXT",
    "FOOTER-TEXT",
    "MORE-SCRIPT",
    "Skip to content",
    "color: red",
]


def test_html_keeps_the_main_content_and_drops_boilerplate() -> None:
    document = parse(PAGE.encode(), filename="returns")

    assert document.detected_type == HTML
    assert document.title == "Returns & refunds | Acme"
    text = all_text(document)
    for boilerplate in BOILERPLATE:
        assert boilerplate not in text
    assert texts(document) == [
        ("heading", "Returns policy", 1),
        ("paragraph", "You can return items within 30 days of delivery.", 0),
        ("paragraph", "Refunds are paid to the original card.", 0),
        ("paragraph", "Gift cards are refunded as credit.", 0),
        ("heading", "What you need", 2),
        ("list_item", "The receipt", 1),
        ("list_item", "or the order number", 2),
        ("list_item", "The item, unused", 1),
        ("table_row", "Item | Days", 0),
        ("table_row", "Shoes | 30", 0),
        ("code", 'POST /returns\n  {"order": 42}', 0),
    ]


def test_html_without_main_reads_the_body_without_page_furniture() -> None:
    page = PAGE.replace('<main id="main">', "<div>").replace("</main>", "</div>")
    page = page.replace("<article>", "<div>").replace("</article>", "</div>")

    document = parse(page.encode())

    text = all_text(document)
    for boilerplate in BOILERPLATE:
        assert boilerplate not in text
    # Outside an article, a header is page furniture: the title is in the one kept here.
    assert "You can return items within 30 days of delivery." in text
    assert "or the order number" in text


def test_html_fragment_is_sniffed_and_entities_decoded() -> None:
    fragment = "<p>Caf&eacute; &mdash; open</p>\n<p>Tea &amp; cake &#8364;3</p>"

    document = parse(fragment.encode(), filename="notes.txt")

    assert document.detected_type == HTML
    assert texts(document) == [
        ("paragraph", "Café — open", 0),
        ("paragraph", "Tea & cake €3", 0),
    ]


def test_html_with_only_scripts_is_empty_text() -> None:
    page = "<html><head><script>alert(1)</script></head><body><nav>Home</nav></body></html>"

    assert parse_error(page.encode()).reason == "empty_text"


def test_deeply_nested_html_is_read() -> None:
    page = "<html><body>" + "<div>" * 5000 + "Deep text." + "</div>" * 5000 + "</body></html>"

    assert all_text(parse(page.encode())) == "Deep text."


# --- Markdown -------------------------------------------------------------------

MARKDOWN_TEXT = """---
title: "Shop guide"
layout: page
---
# Welcome

Welcome to **our** _shop_. See [the map](https://example.com/map_(old)) ![logo](logo.png)
and run `make  shop` to build it. Escaped \\*stars\\* stay.

Opening hours
-------------

- Monday to *Friday*: 9-18
  - lunch break 12-13
- Saturday: 10-14
1. first
2. second

| Day | Opens |  Note   |
|-----|------:|---------|
| Mon | 9     | [busy](x) |
| Tue \\| Wed | 10 |  |

```python
def opens(day):
    return 9
```

> Quoted *advice*.

<!-- an editor's note -->
***

[ref]: https://example.com/ref
Read [the rules][ref].
"""


def test_markdown_structure_and_inline_markup() -> None:
    document = parse(MARKDOWN_TEXT.encode(), filename="guide.md")

    assert document.detected_type == MARKDOWN
    assert document.title == "Shop guide"
    assert texts(document) == [
        ("heading", "Welcome", 1),
        (
            "paragraph",
            "Welcome to our shop. See the map and run make shop to build it. Escaped *stars* stay.",
            0,
        ),
        ("heading", "Opening hours", 2),
        ("list_item", "Monday to Friday: 9-18", 1),
        ("list_item", "lunch break 12-13", 2),
        ("list_item", "Saturday: 10-14", 1),
        ("list_item", "first", 1),
        ("list_item", "second", 1),
        ("table_row", "Day | Opens | Note", 0),
        ("table_row", "Mon | 9 | busy", 0),
        ("table_row", "Tue | Wed | 10 |", 0),  # an escaped pipe is a literal one
        ("code", "def opens(day):\n    return 9", 0),
        ("paragraph", "Quoted advice.", 0),
        ("paragraph", "Read the rules.", 0),
    ]


@pytest.mark.parametrize(
    ("filename", "declared_mime"),
    [("guide.md", None), ("guide", "text/markdown; charset=utf-8"), (None, None)],
)
def test_markdown_is_recognised_by_name_mime_or_content(
    filename: str | None, declared_mime: str | None
) -> None:
    text = "# Hours\n\nWe open at nine.\n\n## Returns\n\nWithin thirty days."

    document = parse(text.encode(), filename=filename, declared_mime=declared_mime)

    assert document.detected_type == MARKDOWN
    assert document.title == "Hours"
    assert texts(document)[0] == ("heading", "Hours", 1)


def test_markdown_title_falls_back_to_the_first_h1() -> None:
    document = parse(b"Intro line.\n\n# Main title\n\nBody [link](x).", filename="a.markdown")

    assert document.title == "Main title"


# --- plain text -------------------------------------------------------------------


def test_plain_text_paragraphs_and_list_items() -> None:
    text = (
        "Our shop opens at nine\nand closes at six.\n\n"
        "Bring:\n- the receipt\n- the item,\n  unused\n    - in its box\n1. then ask\n\n"
        "Thanks for shopping with us."
    )

    document = parse(text.encode(), filename="notes.txt", declared_mime="text/plain")

    assert document.detected_type == PLAIN
    assert document.title is None
    assert texts(document) == [
        ("paragraph", "Our shop opens at nine and closes at six.", 0),
        ("paragraph", "Bring:", 0),
        ("list_item", "the receipt", 1),
        ("list_item", "the item, unused", 1),
        ("list_item", "in its box", 2),
        ("list_item", "then ask", 1),
        ("paragraph", "Thanks for shopping with us.", 0),
    ]


def test_plain_text_with_a_stray_hash_is_not_markdown() -> None:
    text = "Order #42 shipped.\n\n- one box\n- one letter\n\nCall 555-0100 for help."

    assert parse(text.encode()).detected_type == PLAIN


@pytest.mark.parametrize(
    "encoded",
    [
        "Café crème\n\nÜber uns".encode("utf-16"),
        codecs.BOM_UTF16_BE + "Café crème\n\nÜber uns".encode("utf-16-be"),
        codecs.BOM_UTF8 + "Café crème\r\n\r\nÜber uns".encode(),
        "Café crème\r\rÜber uns".encode("cp1252"),
    ],
    ids=["utf-16-le-bom", "utf-16-be-bom", "utf-8-bom", "cp1252"],
)
def test_text_encodings_are_decoded(encoded: bytes) -> None:
    document = parse(encoded)

    assert document.detected_type == PLAIN
    assert texts(document) == [("paragraph", "Café crème", 0), ("paragraph", "Über uns", 0)]


def test_declared_charset_is_used_when_the_bytes_are_not_utf8() -> None:
    encoded = "Привет, мир. Магазин открыт.".encode("cp1251")

    document = parse(encoded, declared_mime="text/plain; charset=windows-1251")

    assert all_text(document) == "Привет, мир. Магазин открыт."


# --- what cannot become text ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00", "PNG image"),
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff", "program"),
        (bytes(range(256)) * 8, "binary file"),
        (b"{\\rtf1\\ansi Hello}", "RTF document"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ],
    ids=["png", "exe", "binary", "rtf", "svg"],
)
def test_unsupported_content_says_what_it_looks_like(data: bytes, what: str) -> None:
    error = parse_error(data, filename="upload.txt", declared_mime="text/plain")

    assert error.reason == "unsupported_type"
    assert what in error.message
    assert "Upload plain text, Markdown, HTML, PDF or DOCX" in error.message


@pytest.mark.parametrize("data", [b"", b"   \n\t\r\n  ", "\u200b\ufeff".encode()])
def test_empty_or_blank_content_is_empty_text(data: bytes) -> None:
    error = parse_error(data)

    assert error.reason == "empty_text"
    assert "selectable text" in error.message


def test_text_over_the_limit_is_too_large() -> None:
    data = ("A sentence about the shop. " * 100).encode()

    error = parse_error(data, max_text_chars=1_000)
    document = parse(data, max_text_chars=10_000)

    assert error.reason == "too_large"
    assert "1,000 characters" in error.message and "Split it" in error.message
    assert sum(len(block.text) for block in document.blocks) <= 10_000


def test_every_parser_returns_normalised_non_empty_blocks() -> None:
    for data, kwargs in [
        (make_pdf(SHOP_PDF_PAGES), {}),
        (make_docx(w_paragraph("  Hello \t  world  ") + w_paragraph("   ")), {}),
        (PAGE.encode(), {}),
        (MARKDOWN_TEXT.encode(), {"filename": "guide.md"}),
        (b"  Hello\t\tthere  \n\n\n  - item  \n", {}),
    ]:
        assert_normalised(parse(data, **kwargs).blocks)  # type: ignore[arg-type]
