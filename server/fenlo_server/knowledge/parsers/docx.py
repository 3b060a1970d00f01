"""DOCX: the WordprocessingML parts streamed within a budget of uncompressed
bytes, then paragraphs, headings, list items and table rows from the styles."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from xml.etree import ElementTree
from xml.parsers import expat

from fenlo_server.knowledge.parsers.common import (
    DOCX,
    MAX_DOCX_DEPTH,
    MAX_DOCX_XML_BYTES,
    MAX_ZIP_ENTRIES,
    MAX_ZIP_RATIO,
    _check_size,
    _clean,
    _unsupported,
)
from fenlo_server.knowledge.types import Block, ParsedDocument, ParseError

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
_CHUNK_BYTES = 1 << 16  # of a part, decompressed and parsed at a time


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


class _DoctypeDeclared(Exception):
    """A part declares a DTD (raised from inside expat, before the DTD is read)."""


def _refuse_doctype(*_: object) -> None:
    raise _DoctypeDeclared


class _PartTree:
    """One XML part parsed a chunk at a time. It refuses a DTD (entity expansion)
    wherever it is and however the part is encoded, and hands over the children of
    one element as soon as they are complete, dropping them from the tree: a
    part's tree is never held whole."""

    def __init__(self, name: str, parent: str | None) -> None:
        self._name = name
        self._parent_tag = parent
        # Start events only: they are enough to find the parent, and cost half.
        self._parser: ElementTree.XMLPullParser[ElementTree.Element] = ElementTree.XMLPullParser(
            events=("start",)
        )
        # A second expat parser only looks for a DOCTYPE; it sees each chunk first.
        self._doctype = expat.ParserCreate()
        self._doctype.StartDoctypeDeclHandler = _refuse_doctype
        self._parent: ElementTree.Element | None = None

    def feed(self, chunk: bytes) -> list[ElementTree.Element]:
        """The children of the parent that ``chunk`` completes; an empty chunk ends
        the part."""
        try:
            self._doctype.Parse(chunk, not chunk)
            if chunk:
                self._parser.feed(chunk)
            else:
                self._parser.close()
            for event in self._parser.read_events():
                element = event[-1]  # start events only: (event, element)
                if (
                    self._parent is None
                    and isinstance(element, ElementTree.Element)
                    and self._parent_tag in (None, element.tag)
                ):
                    self._parent = element
        except _DoctypeDeclared:
            raise _docx_error(f"{self._name} declares a DTD") from None
        except (expat.ExpatError, ElementTree.ParseError) as error:
            raise _docx_error(f"{self._name}: {error}") from error
        except (ValueError, LookupError) as error:  # an encoding expat cannot read
            raise _docx_error(f"{self._name}: {error}") from error
        if self._parent is None:
            return []
        # The last child may still be open, until the part ends.
        count = max(0, len(self._parent) - (1 if chunk else 0))
        done = self._parent[:count]
        del self._parent[:count]
        return done


class _DocxParts:
    """Reads the XML parts of a DOCX within one budget of uncompressed bytes."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self._archive = archive
        self._budget = MAX_DOCX_XML_BYTES

    def each(
        self,
        name: str,
        handle: Callable[[ElementTree.Element], None],
        *,
        parent: str | None = None,
    ) -> bool:
        """Pass each child of the root of part ``name`` (or of its first element
        ``parent``) to ``handle`` once it is complete. False when there is no such
        part."""
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            return False
        if info.flag_bits & 0x1:
            raise ParseError(
                "encrypted",
                "This document is password-protected. Remove the password "
                "(save a copy without protection) and upload it again.",
            )
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > self._budget or (info.file_size > 1 << 20 and ratio > MAX_ZIP_RATIO):
            raise _zip_bomb()
        tree = _PartTree(name, parent)
        try:
            part = self._archive.open(info)
        except Exception as error:  # zipfile raises many kinds on damaged archives
            raise _docx_error(f"{name}: {type(error).__name__}") from error
        with part:
            while True:
                try:
                    # The declared size may lie: never read more than the budget allows.
                    chunk = part.read(min(_CHUNK_BYTES, self._budget + 1))
                except Exception as error:  # zipfile raises many kinds on damaged archives
                    raise _docx_error(f"{name}: {type(error).__name__}") from error
                self._budget -= len(chunk)
                if self._budget < 0:
                    raise _zip_bomb()
                for element in tree.feed(chunk):
                    handle(element)
                if not chunk:
                    return True


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
        styles = _DocxStyles()
        parts.each("word/styles.xml", styles.add)
        reader = _DocxReader(styles, max_text_chars)
        # The body's blocks are read as they arrive: the text limit stops a long one early.
        parts.each("word/document.xml", reader.block, parent=f"{_W}body")
        core_titles: list[str] = []
        parts.each(
            "docProps/core.xml",
            lambda element: (
                core_titles.append(element.text or "") if element.tag == _DC_TITLE else None
            ),
        )
    title = reader.title
    if title is None and core_titles:
        title = core_titles[0].strip() or None
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

    def __init__(self) -> None:
        self._styles: dict[str, _Style] = {}

    def add(self, style: ElementTree.Element) -> None:
        """Read one child of <w:styles>: a style, or something else to skip."""
        style_id = style.get(f"{_W}styleId")
        if style.tag != f"{_W}style" or not style_id:
            return
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

    def block(self, child: ElementTree.Element, depth: int = 0) -> None:
        """Read one child of the body (or of a content control inside it)."""
        if child.tag == f"{_W}p":
            self._paragraph(child)
        elif child.tag == f"{_W}tbl":
            self._table(child)
        elif depth >= MAX_DOCX_DEPTH:
            return  # content controls nested this deep are not a real document's
        elif child.tag == f"{_W}sdt":
            gallery = child.find(f"{_W}sdtPr/{_W}docPartObj/{_W}docPartGallery")
            if gallery is not None and "contents" in gallery.get(f"{_W}val", "").lower():
                return  # a table of contents repeats the headings
            content = child.find(f"{_W}sdtContent")
            for grandchild in content if content is not None else ():
                self.block(grandchild, depth + 1)
        elif child.tag in (f"{_W}customXml", f"{_W}ins"):
            for grandchild in child:
                self.block(grandchild, depth + 1)

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
    _gather_text(paragraph, parts, 0)
    return "".join(parts)


def _gather_text(element: ElementTree.Element, parts: list[str], depth: int) -> None:
    # A function of its own, not a closure: a recursive closure is a reference
    # cycle, one per paragraph for the garbage collector to find.
    if depth >= MAX_DOCX_DEPTH:
        return  # no real document nests this deep
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
            _gather_text(child, parts, depth + 1)
            parts.append(" ")
        elif tag not in (_MC_FALLBACK, f"{_W}del", f"{_W}pPr", f"{_W}rPr"):
            _gather_text(child, parts, depth + 1)
