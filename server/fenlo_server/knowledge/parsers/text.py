"""Plain text and Markdown: paragraphs, list items, headings, code and tables."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from fenlo_server.knowledge.parsers.common import MARKDOWN
from fenlo_server.knowledge.types import Block, BlockKind, ParsedDocument

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
# Raw HTML whose content a reader never sees: a block that starts a line runs to
# the line with its end tag (CommonMark's HTML block 1), blank lines and all.
_MD_HIDDEN_BLOCK = re.compile(r"^ {0,3}<(script|style)(?:[\s>]|$)", re.IGNORECASE)
_MD_HIDDEN_INLINE = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)

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
    text = _MD_HIDDEN_INLINE.sub("", text)
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
        hidden = _MD_HIDDEN_BLOCK.match(line)
        if hidden:
            self._flush()
            return self._hidden_html(lines, index - 1, hidden.group(1))
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

    def _hidden_html(self, lines: Sequence[str], index: int, tag: str) -> int:
        """Skip a <script> or <style> block, up to the line that closes it."""
        end = re.compile(rf"</{tag}\s*>", re.IGNORECASE)
        while index < len(lines):
            index += 1
            if end.search(lines[index - 1]):
                break
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
