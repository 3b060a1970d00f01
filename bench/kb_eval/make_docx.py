"""Write bench/kb_eval/docs/membership-plan.docx with the standard library only.

    python bench/kb_eval/make_docx.py

A minimal but complete WordprocessingML package: [Content_Types].xml, package and document
relationships, styles (Title, Heading1, Heading2, ListParagraph, TableGrid), numbering
definitions for a bulleted and a numbered list, core properties and the document body with
headings, paragraphs, lists and a table. Zip entries carry a fixed timestamp so the output is
byte-for-byte reproducible.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

OUT = Path(__file__).resolve().parent / "docs" / "membership-plan.docx"
STAMP = (2025, 3, 1, 9, 0, 0)

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
R_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


# ---------------------------------------------------------------- body builders


def run(text: str, bold: bool = False) -> str:
    props = "<w:rPr><w:b/></w:rPr>" if bold else ""
    return f'<w:r>{props}<w:t xml:space="preserve">{escape(text)}</w:t></w:r>'


def para(
    text: str | list[tuple[str, bool]], style: str | None = None, num: int | None = None
) -> str:
    ppr = ""
    if style or num is not None:
        inner = f'<w:pStyle w:val="{style}"/>' if style else ""
        if num is not None:
            inner += f'<w:numPr><w:ilvl w:val="0"/><w:numId w:val="{num}"/></w:numPr>'
        ppr = f"<w:pPr>{inner}</w:pPr>"
    runs = run(text) if isinstance(text, str) else "".join(run(t, b) for t, b in text)
    return f"<w:p>{ppr}{runs}</w:p>"


def heading(text: str, level: int) -> str:
    return para(text, f"Heading{level}")


def bullets(items: list[str]) -> str:
    return "".join(para(i, "ListParagraph", num=1) for i in items)


def numbered(items: list[str]) -> str:
    return "".join(para(i, "ListParagraph", num=2) for i in items)


def table(rows: list[list[str]], widths: list[int]) -> str:
    grid = "".join(f'<w:gridCol w:w="{w}"/>' for w in widths)
    out = [
        '<w:tbl><w:tblPr><w:tblStyle w:val="TableGrid"/><w:tblW w:w="0" w:type="auto"/>'
        '<w:tblLook w:val="04A0" w:firstRow="1" w:lastRow="0" w:firstColumn="1" '
        'w:lastColumn="0" w:noHBand="0" w:noVBand="1"/></w:tblPr>',
        f"<w:tblGrid>{grid}</w:tblGrid>",
    ]
    for r, cells in enumerate(rows):
        tr = ["<w:tr>"]
        if r == 0:
            tr.append("<w:trPr><w:tblHeader/></w:trPr>")
        for c, cell in enumerate(cells):
            tr.append(
                f'<w:tc><w:tcPr><w:tcW w:w="{widths[c]}" w:type="dxa"/></w:tcPr>'
                f"{para([(cell, r == 0)])}</w:tc>"
            )
        tr.append("</w:tr>")
        out.append("".join(tr))
    out.append("</w:tbl>")
    return "".join(out)


def body() -> str:
    parts = [
        para("Harbour Smile Plan: Membership Guide", "Title"),
        para(
            "The Harbour Smile Plan spreads the cost of your routine dental care into a fixed "
            "monthly payment and gives you discounts on treatment and on the care products we "
            "sell. The plan is run by Harbour Dental Clinic itself, not by an insurance company, "
            "so your fees stay with the practice that looks after you."
        ),
        heading("Choose your plan", 1),
        para(
            "There are three plans. Each plan year starts on the day you join. The table shows "
            "what is included every plan year."
        ),
        table(
            [
                [
                    "Plan",
                    "Monthly fee",
                    "Check-ups per year",
                    "Hygienist visits per year",
                    "Discount on treatment",
                ],
                ["Essential", "£16.50", "2", "2", "10%"],
                ["Plus", "£24.00", "2", "4", "15%"],
                ["Child (under 18)", "£7.00", "2", "1", "10%"],
            ],
            [2000, 1500, 1700, 1900, 1900],
        ),
        para(
            "Included hygienist visits are standard 30-minute visits. If your hygienist "
            "recommends an extended visit for gum disease, you pay only the difference between "
            "the two prices."
        ),
        heading("What every plan includes", 1),
        bullets(
            [
                "The check-ups and hygienist visits shown in the table above.",
                "Bitewing X-rays whenever your dentist decides they are clinically needed.",
                "10% off all care products sold at reception, on every plan.",
                "The discount shown in the table on fillings, root canal treatment, crowns, "
                "extractions, whitening, bonding and guards.",
                "Priority booking for emergency appointments during opening hours.",
            ]
        ),
        para(
            "The treatment discount does not apply to Invisalign treatment or to care products, "
            "which have their own discount."
        ),
        heading("Emergencies", 1),
        heading("Emergency appointments at the clinic", 2),
        para(
            "Plus members: in-hours emergency appointments are free of charge, up to 2 per plan "
            "year. Essential and Child members pay half price for in-hours emergency "
            "appointments. Out-of-hours emergency appointments are charged at the standard fee "
            "for all members, with no plan discount."
        ),
        heading("Worldwide dental emergency cover", 2),
        para(
            "The Essential and Plus plans include worldwide dental emergency cover of up to £800 "
            "per plan year, underwritten by Quayside Assurance Ltd. It pays for emergency "
            "treatment to relieve pain, or to repair damage after an accident, when you are more "
            "than 25 miles from Port Ellery, in the UK or abroad. Keep your receipts and send "
            "your claim within 90 days of the treatment. The cover starts 30 days after you join "
            "and is not part of the Child plan."
        ),
        heading("Joining the plan", 1),
        numbered(
            [
                "Book a new patient examination, unless you have had a check-up with us in the "
                "last 12 months.",
                "Your dentist confirms that your teeth and gums are healthy enough to join. Any "
                "urgent treatment is completed first, at the standard prices.",
                "Complete the sign-up form at reception and set up your Direct Debit.",
            ]
        ),
        para("There is no joining fee. Children can join the Child plan from birth."),
        heading("Payments and cancelling", 1),
        bullets(
            [
                "Fees are collected monthly by Direct Debit on the 1st of each month.",
                "The minimum term is 12 months.",
                "After the minimum term you can cancel at any time by giving 30 days' notice in "
                "writing.",
                "If you leave before the end of the minimum term, we charge the standard price "
                "of the check-ups and hygienist visits you have used, less the monthly fees you "
                "have already paid.",
                "Households with three or more people on the plan receive 5% off their combined "
                "monthly fee.",
                "You can pause your plan for up to 3 months once per plan year, for example for "
                "parental leave or a long illness.",
                "Plan fees are reviewed once a year in April, and we give you 2 months' notice of "
                "any change.",
            ]
        ),
        heading("Missed appointments", 2),
        para(
            "A check-up or hygienist visit that you miss without 24 hours' notice counts as one "
            "of your included visits for the year. The late cancellation fee in our patient "
            "policies also applies."
        ),
        heading("Unused visits", 2),
        para(
            "Included visits that you do not use cannot be carried over into the next plan year "
            "and are not refunded."
        ),
        heading("Questions about the plan", 1),
        para(
            [
                ("Contact our Practice Manager, Jo Carrow, at reception or by email at ", False),
                ("smileplan@harbourdental.example", True),
                (". Please have your patient number ready.", False),
            ]
        ),
    ]
    sect = (
        '<w:sectPr><w:pgSz w:w="11906" w:h="16838"/>'
        '<w:pgMar w:top="1440" w:right="1440" w:bottom="1440" w:left="1440" w:header="708" '
        'w:footer="708" w:gutter="0"/></w:sectPr>'
    )
    return "".join(parts) + sect


# ---------------------------------------------------------------- package parts

_PKG = "http://schemas.openxmlformats.org/package/2006"
_OFFICE_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument"
_XML_DECL = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'


def _content_types() -> str:
    overrides = [
        ("/word/document.xml", f"{_CT}.wordprocessingml.document.main+xml"),
        ("/word/styles.xml", f"{_CT}.wordprocessingml.styles+xml"),
        ("/word/numbering.xml", f"{_CT}.wordprocessingml.numbering+xml"),
        ("/docProps/core.xml", "application/vnd.openxmlformats-package.core-properties+xml"),
        ("/docProps/app.xml", f"{_CT}.extended-properties+xml"),
    ]
    return (
        f'{_XML_DECL}<Types xmlns="{_PKG}/content-types">'
        '<Default Extension="rels" '
        'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        + "".join(f'<Override PartName="{n}" ContentType="{t}"/>' for n, t in overrides)
        + "</Types>"
    )


def _relationships(rels: list[tuple[str, str]]) -> str:
    body = "".join(
        f'<Relationship Id="rId{i}" Type="{kind}" Target="{target}"/>'
        for i, (kind, target) in enumerate(rels, 1)
    )
    return f'{_XML_DECL}<Relationships xmlns="{_PKG}/relationships">{body}</Relationships>'


CONTENT_TYPES = _content_types()

PACKAGE_RELS = _relationships(
    [
        (f"{_OFFICE_REL}/officeDocument", "word/document.xml"),
        (f"{_PKG}/relationships/metadata/core-properties", "docProps/core.xml"),
        (f"{_OFFICE_REL}/extended-properties", "docProps/app.xml"),
    ]
)

DOCUMENT_RELS = _relationships(
    [(f"{_OFFICE_REL}/styles", "styles.xml"), (f"{_OFFICE_REL}/numbering", "numbering.xml")]
)

CORE = (
    f"{_XML_DECL}<cp:coreProperties "
    f'xmlns:cp="{_PKG}/metadata/core-properties" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:dcterms="http://purl.org/dc/terms/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    "<dc:title>Harbour Smile Plan: Membership Guide</dc:title>"
    "<dc:creator>Harbour Dental Clinic Ltd</dc:creator>"
    '<dcterms:created xsi:type="dcterms:W3CDTF">2025-03-01T09:00:00Z</dcterms:created>'
    '<dcterms:modified xsi:type="dcterms:W3CDTF">2025-03-01T09:00:00Z</dcterms:modified>'
    "</cp:coreProperties>"
)

APP = (
    f"{_XML_DECL}<Properties "
    'xmlns="http://schemas.openxmlformats.org/officeDocument/2006/extended-properties">'
    "<Application>bench/kb_eval/make_docx.py</Application></Properties>"
)


def _style(style_id: str, name: str, ppr: str = "", rpr: str = "", kind: str = "paragraph") -> str:
    based = '<w:basedOn w:val="Normal"/><w:next w:val="Normal"/>'
    return (
        f'<w:style w:type="{kind}"'
        + (' w:default="1"' if style_id == "Normal" else "")
        + f' w:styleId="{style_id}"><w:name w:val="{name}"/>'
        + (based if style_id != "Normal" and kind == "paragraph" else "")
        + "<w:qFormat/>"
        + (f"<w:pPr>{ppr}</w:pPr>" if ppr else "")
        + (f"<w:rPr>{rpr}</w:rPr>" if rpr else "")
        + "</w:style>"
    )


STYLES = (
    f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:styles xmlns:w="{W_NS}">'
    '<w:docDefaults><w:rPrDefault><w:rPr><w:rFonts w:ascii="Calibri" w:hAnsi="Calibri" '
    'w:cs="Calibri"/><w:sz w:val="22"/><w:lang w:val="en-GB"/></w:rPr></w:rPrDefault>'
    '<w:pPrDefault><w:pPr><w:spacing w:after="160" w:line="259" w:lineRule="auto"/></w:pPr>'
    "</w:pPrDefault></w:docDefaults>"
    + _style("Normal", "Normal")
    + _style(
        "Title",
        "Title",
        '<w:spacing w:after="240"/>',
        '<w:b/><w:color w:val="0B3954"/><w:sz w:val="48"/>',
    )
    + _style(
        "Heading1",
        "heading 1",
        '<w:keepNext/><w:spacing w:before="360" w:after="120"/><w:outlineLvl w:val="0"/>',
        '<w:b/><w:color w:val="0B3954"/><w:sz w:val="32"/>',
    )
    + _style(
        "Heading2",
        "heading 2",
        '<w:keepNext/><w:spacing w:before="240" w:after="80"/><w:outlineLvl w:val="1"/>',
        '<w:b/><w:color w:val="087E8B"/><w:sz w:val="26"/>',
    )
    + _style("ListParagraph", "List Paragraph", '<w:ind w:left="720"/><w:contextualSpacing/>')
    + '<w:style w:type="table" w:styleId="TableGrid"><w:name w:val="Table Grid"/><w:tblPr>'
    '<w:tblBorders><w:top w:val="single" w:sz="4" w:space="0" w:color="auto"/>'
    '<w:left w:val="single" w:sz="4" w:space="0" w:color="auto"/>'
    '<w:bottom w:val="single" w:sz="4" w:space="0" w:color="auto"/>'
    '<w:right w:val="single" w:sz="4" w:space="0" w:color="auto"/>'
    '<w:insideH w:val="single" w:sz="4" w:space="0" w:color="auto"/>'
    '<w:insideV w:val="single" w:sz="4" w:space="0" w:color="auto"/></w:tblBorders>'
    "</w:tblPr></w:style>"
    "</w:styles>"
)

NUMBERING = (
    f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:numbering xmlns:w="{W_NS}">'
    '<w:abstractNum w:abstractNumId="0"><w:multiLevelType w:val="singleLevel"/>'
    '<w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="bullet"/><w:lvlText w:val="\u2022"/>'
    '<w:lvlJc w:val="left"/><w:pPr><w:ind w:left="720" w:hanging="360"/></w:pPr></w:lvl>'
    "</w:abstractNum>"
    '<w:abstractNum w:abstractNumId="1"><w:multiLevelType w:val="singleLevel"/>'
    '<w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="decimal"/><w:lvlText w:val="%1."/>'
    '<w:lvlJc w:val="left"/><w:pPr><w:ind w:left="720" w:hanging="360"/></w:pPr></w:lvl>'
    "</w:abstractNum>"
    '<w:num w:numId="1"><w:abstractNumId w:val="0"/></w:num>'
    '<w:num w:numId="2"><w:abstractNumId w:val="1"/></w:num>'
    "</w:numbering>"
)


def document_xml() -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<w:document xmlns:w="{W_NS}" xmlns:r="{R_NS}"><w:body>{body()}</w:body></w:document>'
    )


def build(path: Path = OUT) -> None:
    parts = [
        ("[Content_Types].xml", CONTENT_TYPES),
        ("_rels/.rels", PACKAGE_RELS),
        ("docProps/core.xml", CORE),
        ("docProps/app.xml", APP),
        ("word/document.xml", document_xml()),
        ("word/_rels/document.xml.rels", DOCUMENT_RELS),
        ("word/styles.xml", STYLES),
        ("word/numbering.xml", NUMBERING),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in parts:
            info = zipfile.ZipInfo(name, date_time=STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, text.encode("utf-8"))


def main() -> None:
    build()
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
