"""HTML: a forgiving tree, then blocks with boilerplate dropped and the main
content preferred."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

from fenlo_server.knowledge.parsers.common import HTML, MAX_HTML_DEPTH, _clean
from fenlo_server.knowledge.types import Block, BlockKind, ParsedDocument


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
        if empty or tag in _VOID:
            return
        # Past the depth limit an element's content goes to its ancestor, except the
        # content of an element that is dropped anyway (a script, a hidden block):
        # it gets one level more, so that what it holds is dropped with it.
        depth = len(self._stack)
        if depth < MAX_HTML_DEPTH or (
            depth == MAX_HTML_DEPTH and (tag in _DROP_TAGS or _is_hidden(element))
        ):
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

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        # The standard library raises AssertionError on a marked section it does not
        # know (`<![foo[`, `<![ `); HTML reads any of them as a bogus comment.
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i + 3)
            return -1 if end < 0 else end + 1


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
