"""Write bench/kb_eval/docs/policies.pdf: a small, valid, multi-page PDF in Helvetica.

Self-contained (standard library only) so the evaluation set can be regenerated anywhere:

    python bench/kb_eval/make_pdf.py

The PDF objects are written by hand: the 14 standard fonts need no embedding, text is
encoded with WinAnsiEncoding (cp1252, which has the pound sign and the bullet), lines are
wrapped with the Helvetica character widths from the Adobe AFM files, and every page gets a
running footer. The output is byte-for-byte reproducible (fixed dates, no random ids).
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent / "docs" / "policies.pdf"

TITLE = "Harbour Dental Clinic - Patient Policies"

# (kind, text): "title", "sub", "h" (heading), "p" (paragraph), "li" (bullet item)
CONTENT: list[tuple[str, str]] = [
    ("title", "Patient Policies"),
    (
        "sub",
        "Harbour Dental Clinic Ltd, 14 Quay Street, Port Ellery PE3 7RD. Effective 1 March 2025.",
    ),
    (
        "p",
        "These policies explain how appointments, payments, refunds, insurance and your "
        "personal information are handled at Harbour Dental Clinic. They apply to all "
        "patients, including members of the Harbour Smile Plan. Please ask reception if "
        "anything is unclear.",
    ),
    ("h", "1. Booking, cancellations and missed appointments"),
    (
        "p",
        "We set aside the full appointment time for you, so we ask for at least 24 hours' "
        "notice if you need to cancel or move an appointment. You can cancel by phone, by "
        "email, through the online booking page, or by replying C to your reminder text "
        "message.",
    ),
    (
        "p",
        "If you cancel with less than 24 hours' notice, or do not attend, we charge a late "
        "cancellation fee:",
    ),
    ("li", "£30 for appointments of up to 30 minutes;"),
    ("li", "£60 for appointments longer than 30 minutes."),
    (
        "p",
        "If you miss two appointments within 12 months, we will ask for a booking deposit of "
        "£50 before we book any further appointments. The deposit is deducted from the cost "
        "of the appointment when you attend.",
    ),
    (
        "p",
        "If you arrive more than 15 minutes late, we may not be able to complete your "
        "treatment and may need to rebook you. Patients under 16 must be accompanied by a "
        "parent or guardian.",
    ),
    ("h", "2. Deposits for treatment plans"),
    (
        "p",
        "For any course of treatment costing more than £500 we ask for a deposit of 25% of "
        "the estimate when you book. The deposit is refunded in full if you cancel the "
        "treatment plan more than 7 days before your first treatment appointment.",
    ),
    ("h", "3. Payment"),
    (
        "p",
        "Payment is due on the day of each appointment, at the end of the visit. For a course"
        " of treatment we take payment for the work carried out at each visit. We accept:",
    ),
    ("li", "cash;"),
    ("li", "debit and credit cards (Visa, Mastercard and American Express);"),
    ("li", "Apple Pay and Google Pay;"),
    (
        "li",
        "bank transfer, for treatment plans only, quoting your patient number as the reference.",
    ),
    ("p", "We no longer accept cheques."),
    (
        "p",
        "Interest-free finance: treatments costing over £1,000 can be spread over 12 months "
        "at 0% interest through our finance partner Tidewater Finance, subject to status. "
        "Longer terms of 24 or 36 months are available at 9.9% APR representative. Ask "
        "reception for an application form; a decision usually takes a few minutes.",
    ),
    ("h", "4. Refunds, returns and guarantees"),
    (
        "p",
        "Care products: unopened products bought at reception can be returned within 14 days "
        "with the receipt for a full refund. For hygiene reasons opened toothbrushes, brush "
        "heads and interdental brushes cannot be returned unless they are faulty. The Harbour"
        " Sonic electric toothbrush has a 2-year manufacturer's warranty.",
    ),
    (
        "p",
        "Refunds are paid to the original payment method within 10 working days. Cash "
        "purchases are refunded by bank transfer.",
    ),
    (
        "p",
        "Treatment: we cannot refund treatment that has been carried out, but we stand behind"
        " our work. White fillings are guaranteed for 2 years and crowns for 5 years, "
        "provided you attend a check-up at least every 12 months and follow the hygiene "
        "advice we give you. If a guaranteed filling or crown fails within that time, we will"
        " repair or replace it free of charge. The guarantee does not cover accidental "
        "damage, such as a sports injury.",
    ),
    ("h", "5. Dental insurance"),
    (
        "p",
        "Harbour Dental Clinic is a private practice. We do not claim directly from insurance"
        " companies: you pay us on the day and claim the money back from your insurer. We "
        "give you an itemised invoice with treatment codes, which all major insurers accept. "
        "If your insurer asks for a pre-treatment estimate, we will send your treatment plan "
        "to them within 2 working days of your request.",
    ),
    (
        "p",
        "The Harbour Smile Plan is a membership plan, not an insurance policy, apart from the"
        " worldwide dental emergency cover that is included with some plans. The Smile Plan "
        "terms explain that cover.",
    ),
    ("h", "6. Comments and complaints"),
    (
        "p",
        "We want to hear when something has not gone well. Speak to any member of the team, "
        "or write to our Practice Manager, Jo Carrow. We acknowledge every complaint within 3"
        " working days and aim to give you a full response within 20 working days.",
    ),
    ("h", "7. Your personal data and privacy"),
    (
        "p",
        "Harbour Dental Clinic Ltd is the data controller for the personal information we "
        "hold about you. We collect your contact details, medical history, dental records, "
        "X-rays, photographs and payment records so that we can provide safe dental care and "
        "run the practice.",
    ),
    (
        "p",
        "How long we keep records: adult dental records are kept for 11 years after your last"
        " visit. Records of children are kept until their 25th birthday or for 11 years after"
        " the last visit, whichever is longer.",
    ),
    (
        "p",
        "Sharing: we share information only when it is needed for your care (for example with"
        " a dental laboratory or a specialist you are referred to), when you ask us to, or "
        "when the law requires it. We never sell your data, and we do not use it for "
        "advertising.",
    ),
    (
        "p",
        "Reminders and marketing: we send appointment reminders by email and text message. "
        "Newsletters are sent only if you have opted in, and you can opt out of either at any"
        " time.",
    ),
    (
        "p",
        "CCTV: there is a camera in reception only, for the safety of patients and staff. "
        "Recordings are deleted automatically after 30 days.",
    ),
    (
        "p",
        "Your rights: you can ask for a copy of your records, ask us to correct them, or "
        "object to how we use your data. Copies of your records are free of charge and we "
        "will respond within one month. Contact our data protection lead at "
        "privacy@harbourdental.example. If you are unhappy with our answer, you can complain "
        "to the Information Commissioner's Office.",
    ),
]

# Helvetica and Helvetica-Bold advance widths (1/1000 em) for printable ASCII 32..126,
# from the Adobe Core14 AFM files.
_HELV = [
    278,
    278,
    355,
    556,
    556,
    889,
    667,
    191,
    333,
    333,
    389,
    584,
    278,
    333,
    278,
    278,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    278,
    278,
    584,
    584,
    584,
    556,
    1015,
    667,
    667,
    722,
    722,
    667,
    611,
    778,
    722,
    278,
    500,
    667,
    556,
    833,
    722,
    778,
    667,
    778,
    722,
    667,
    611,
    722,
    667,
    944,
    667,
    667,
    611,
    278,
    278,
    278,
    469,
    556,
    333,
    556,
    556,
    500,
    556,
    556,
    278,
    556,
    556,
    222,
    222,
    500,
    222,
    833,
    556,
    556,
    556,
    556,
    333,
    500,
    278,
    556,
    500,
    722,
    500,
    500,
    500,
    334,
    260,
    334,
    584,
]
_HELV_BOLD = [
    278,
    333,
    474,
    556,
    556,
    889,
    722,
    238,
    333,
    333,
    389,
    584,
    278,
    333,
    278,
    278,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    556,
    333,
    333,
    584,
    584,
    584,
    611,
    975,
    722,
    722,
    722,
    722,
    667,
    611,
    778,
    722,
    278,
    556,
    722,
    611,
    833,
    722,
    778,
    667,
    778,
    722,
    667,
    611,
    722,
    667,
    944,
    667,
    667,
    611,
    333,
    278,
    333,
    584,
    556,
    333,
    556,
    611,
    556,
    611,
    556,
    333,
    611,
    611,
    278,
    278,
    556,
    278,
    889,
    611,
    611,
    611,
    611,
    389,
    556,
    333,
    611,
    556,
    778,
    556,
    556,
    500,
    389,
    280,
    389,
    584,
]
_EXTRA = {"£": 556, "•": 350, "’": 222, "‘": 222, "“": 333, "”": 333, "–": 556, "—": 1000}

PAGE_W, PAGE_H = 595, 842  # A4 in points
MARGIN_X, TOP, BOTTOM = 64, 780, 80
FONTS = {"F1": _HELV, "F2": _HELV_BOLD}


def text_width(text: str, font: str, size: float) -> float:
    table = FONTS[font]
    total = 0
    for ch in text:
        code = ord(ch)
        total += table[code - 32] if 32 <= code <= 126 else _EXTRA.get(ch, 556)
    return total * size / 1000


def wrap(text: str, font: str, size: float, width: float) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if current and text_width(candidate, font, size) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def pdf_string(text: str) -> bytes:
    raw = text.encode("cp1252")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


# A laid-out line: (font, size, x, y, text)
Line = tuple[str, float, float, float, str]


def layout() -> list[list[Line]]:
    styles = {
        "title": ("F2", 20.0, 26.0, 4.0),
        "sub": ("F1", 9.5, 13.0, 14.0),
        "h": ("F2", 13.0, 17.0, 4.0),
        "p": ("F1", 10.5, 14.0, 7.0),
        "li": ("F1", 10.5, 14.0, 2.0),
    }
    pages: list[list[Line]] = [[]]
    y = TOP
    prev_kind = ""

    def wrapped(kind: str, text: str) -> list[str]:
        font, size = styles[kind][:2]
        indent = 18.0 if kind == "li" else 0.0
        return wrap(text, font, size, PAGE_W - 2 * MARGIN_X - indent)

    for index, (kind, text) in enumerate(CONTENT):
        font, size, leading, after = styles[kind]
        indent = 18.0 if kind == "li" else 0.0
        lines = wrapped(kind, text)
        before = 12.0 if kind == "h" else (5.0 if kind != "li" and prev_kind == "li" else 0.0)
        needed = before + leading * len(lines)
        if kind == "h" and index + 1 < len(CONTENT):  # keep a heading with the next block
            next_kind, next_text = CONTENT[index + 1]
            needed += styles[next_kind][2] * len(wrapped(next_kind, next_text))
        if y - needed < BOTTOM:  # blocks are short: move a block whole rather than split it
            pages.append([])
            y = TOP
            before = 0.0
        y -= before
        for i, line in enumerate(lines):
            if y - leading < BOTTOM:
                pages.append([])
                y = TOP
            y -= leading
            if kind == "li" and i == 0:
                pages[-1].append((font, size, MARGIN_X + 6, y, "•"))
            pages[-1].append((font, size, MARGIN_X + indent, y, line))
        y -= after
        prev_kind = kind
    return pages


def content_stream(lines: list[Line], page_no: int, page_count: int) -> bytes:
    out = [b"0.05 0.22 0.33 rg"]
    for font, size, x, y, text in lines:
        out.append(
            f"BT /{font} {size:g} Tf {x:.2f} {y:.2f} Td ".encode() + pdf_string(text) + b" Tj ET"
        )
    footer = f"Harbour Dental Clinic - Patient Policies - Page {page_no} of {page_count}"
    out.append(b"0.4 0.4 0.4 rg")
    out.append(f"{MARGIN_X} 60 m {PAGE_W - MARGIN_X} 60 l 0.5 w 0.6 0.6 0.6 RG S".encode())
    out.append(f"BT /F1 8 Tf {MARGIN_X:.2f} 46.00 Td ".encode() + pdf_string(footer) + b" Tj ET")
    return b"\n".join(out) + b"\n"


def build() -> bytes:
    pages = layout()
    n = len(pages)
    # Object numbers: 1 catalog, 2 pages, 3 F1, 4 F2, 5 info, then (page, content) pairs.
    objects: dict[int, bytes] = {}
    page_ids = [6 + 2 * i for i in range(n)]
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R /Lang (en-GB) >>"
    kids = " ".join(f"{p} 0 R" for p in page_ids)
    objects[2] = f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode()
    for num, base in ((3, "Helvetica"), (4, "Helvetica-Bold")):
        objects[num] = (
            f"<< /Type /Font /Subtype /Type1 /BaseFont /{base} /Encoding /WinAnsiEncoding >>"
        ).encode()
    objects[5] = (
        b"<< /Title " + pdf_string(TITLE) + b" /Author (Harbour Dental Clinic Ltd)"
        b" /Producer (bench/kb_eval/make_pdf.py) /CreationDate (D:20250301090000Z) >>"
    )
    for i, lines in enumerate(pages):
        page_id, content_id = page_ids[i], page_ids[i] + 1
        objects[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
            f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents {content_id} 0 R >>"
        ).encode()
        stream = content_stream(lines, i + 1, n)
        objects[content_id] = (
            f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"endstream"
        )

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += f"{num} 0 obj\n".encode() + objects[num] + b"\nendobj\n"
    xref_at = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n".encode()
    out += b"0000000000 65535 f \n"
    for num in range(1, size):
        out += f"{offsets[num]:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {size} /Root 1 0 R /Info 5 0 R >>\n".encode()
    out += f"startxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(out)


def main() -> None:
    data = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes, {len(layout())} pages)")


if __name__ == "__main__":
    main()
