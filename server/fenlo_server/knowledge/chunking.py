"""Cut a parsed document into sections (what the LLM reads) and chunks (what is matched).

A section is the run of blocks under one heading path, split at block boundaries
when it is longer than ``parent_tokens``. Inside a section, chunks pack whole
blocks up to ``child_tokens``; runs of list items or table rows move together to
the next chunk when they do not fit the current one; a block too long for a chunk
is split at sentence boundaries, then between words. Consecutive chunks of a
section share about ``overlap_tokens`` of text, carried from the end of the one
before, so a passage cut in two can still be found whole in one of them.

Budgets are checked by counting the candidate text itself, not by adding up
counts of its parts, so any ``count_tokens`` is honoured, additive or not.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fenlo_server.knowledge.types import Block, ChunkDraft, Chunked, ParsedDocument, Section

# What an item is: a run of blocks, one block, one sentence, or a piece of a sentence
# already cut between words (which flows on into the next pack instead of moving whole).
_RUN, _BLOCK, _SENTENCE, _WORDS = 0, 1, 2, 3

# A sentence ends at . ! ? … (or their CJK forms), perhaps closed by quotes or
# brackets, before white space; CJK full stops need no space after them.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|(?<=[.!?…][\"'”’)\]])\s+|(?<=[。！？])\s*")


@dataclass(frozen=True, slots=True)
class _Block:
    """A block as it is written into section and chunk text."""

    text: str
    kind: str


@dataclass(frozen=True, slots=True)
class _Unit:
    """A piece of one block's text, as it is placed in a pack."""

    text: str
    block: int  # index of its block in the sequence being packed
    sep: str  # joins it to the unit before it when both come from the same block


@dataclass(frozen=True, slots=True)
class _Item:
    units: tuple[_Unit, ...]
    level: int


@dataclass(frozen=True, slots=True)
class _Pack:
    units: tuple[_Unit, ...]
    text: str
    tokens: int


def chunk_document(
    parsed: ParsedDocument,
    *,
    count_tokens: Callable[[str], int],
    child_tokens: int = 128,
    overlap_tokens: int = 32,
    parent_tokens: int = 512,
) -> Chunked:
    """Split ``parsed`` into sections and chunks; deterministic for the same input.

    Section and chunk ordinals are 0-based and dense; a chunk's ``section`` is the
    ordinal of the section that holds it. Headings are not chunk text: they are
    the ``heading_path`` of the sections under them (a heading with nothing under
    it becomes the text of its own section, so no text is lost).
    """
    if child_tokens < 1:
        raise ValueError("child_tokens must be at least 1")
    if not 0 <= overlap_tokens < child_tokens:
        raise ValueError("overlap_tokens must be at least 0 and less than child_tokens")
    if parent_tokens < child_tokens:
        raise ValueError("parent_tokens must be at least child_tokens")
    parents = _Packer(count_tokens, parent_tokens, 0)
    children = _Packer(count_tokens, child_tokens, overlap_tokens)
    sections: list[Section] = []
    chunks: list[ChunkDraft] = []
    for heading_path, blocks in _by_heading(parsed.blocks):
        formatted = [_format(block) for block in blocks]
        for section_pack in parents.pack(formatted):
            ordinal = len(sections)
            sections.append(Section(ordinal, heading_path, section_pack.text))
            for pack in children.pack(_regroup(section_pack.units, formatted)):
                chunks.append(ChunkDraft(len(chunks), ordinal, pack.text, pack.tokens))
    return Chunked(sections=sections, chunks=chunks)


def _by_heading(blocks: Sequence[Block]) -> Iterable[tuple[tuple[str, ...], list[Block]]]:
    """The runs of non-heading blocks, each with the headings that enclose it."""
    stack: list[tuple[int, str]] = []  # (level, text), outermost first
    body: list[Block] = []
    for index, block in enumerate(blocks):
        if not block.text.strip():
            continue
        if block.kind != "heading":
            body.append(block)
            continue
        level = max(block.level, 1)
        if body:
            yield tuple(text for _, text in stack), body
            body = []
        elif stack and not _opens_subsection(stack[-1][0], blocks, index):
            # The heading before this one has nothing under it: it is its own text.
            yield tuple(text for _, text in stack), [Block("paragraph", stack[-1][1])]
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, block.text))
    if body:
        yield tuple(text for _, text in stack), body
    elif stack:
        yield tuple(text for _, text in stack), [Block("paragraph", stack[-1][1])]


def _opens_subsection(previous_level: int, blocks: Sequence[Block], index: int) -> bool:
    return max(blocks[index].level, 1) > previous_level


def _format(block: Block) -> _Block:
    if block.kind == "list_item":
        indent = "  " * (max(block.level, 1) - 1)
        return _Block(f"{indent}- {block.text}", block.kind)
    return _Block(block.text, block.kind)


def _regroup(units: Sequence[_Unit], blocks: Sequence[_Block]) -> list[_Block]:
    """The (parts of) blocks a section pack holds, each as one block again."""
    regrouped: list[_Block] = []
    current: int | None = None
    for unit in units:
        if unit.block == current:
            previous = regrouped[-1]
            regrouped[-1] = _Block(previous.text + unit.sep + unit.text, previous.kind)
        else:
            regrouped.append(_Block(unit.text, blocks[unit.block].kind))
            current = unit.block
    return regrouped


def _join(units: Iterable[_Unit]) -> str:
    parts: list[str] = []
    previous: int | None = None
    for unit in units:
        if parts:
            parts.append(unit.sep if unit.block == previous else "\n")
        parts.append(unit.text)
        previous = unit.block
    return "".join(parts)


def _sentences(text: str, block: int, sep: str, code: bool) -> list[_Unit]:
    """``text`` cut into sentences (lines, for code); the first keeps ``sep``."""
    if code:
        pieces = [line for line in text.split("\n") if line.strip()]
        inner = "\n"
    else:
        pieces = [piece for piece in _SENTENCE_END.split(text) if piece and piece.strip()]
        inner = " "
    if not pieces:
        return [_Unit(text, block, sep)]
    return [_Unit(piece, block, sep if i == 0 else inner) for i, piece in enumerate(pieces)]


def _words(text: str) -> tuple[list[str], str]:
    """``text`` cut into words; a single word is cut into characters."""
    words = text.split()
    if len(words) > 1:
        return words, " "
    return list(text.strip()), ""


class _Packer:
    """Fills packs of at most ``budget`` tokens, the later ones starting with
    about ``overlap`` tokens from the end of the one before.

    Pieces are counted once each and a candidate is estimated as the sum of its
    pieces, which is exact for word-piece tokenizers. Every pack is counted
    whole before it is emitted; the first time that differs from the estimate,
    the packer counts every candidate from then on, and moves what overflowed
    back to the queue.
    """

    def __init__(self, count_tokens: Callable[[str], int], budget: int, overlap: int) -> None:
        self._count_tokens = count_tokens
        self._budget = budget
        self._overlap = overlap
        self._overhead = max(0, count_tokens(""))  # e.g. [CLS] and [SEP], once per text
        self._costs: dict[str, int] = {}
        self._additive = True
        self._kinds: list[str] = []

    def _cost(self, text: str) -> int:
        """Tokens ``text`` adds to a pack; a text of far more words than a pack
        holds is not counted at all, only known to be too long."""
        cost = self._costs.get(text)
        if cost is None:
            if len(text) > 32 * self._budget and len(text.split()) > 4 * self._budget:
                cost = 4 * self._budget  # a word is at least a token, for any real tokenizer
            else:
                cost = max(0, self._count_tokens(text) - self._overhead)
            self._costs[text] = cost
        return cost

    def _tokens(self, units: Sequence[_Unit]) -> int:
        if not units:
            return 0
        estimate = self._overhead + sum(self._cost(unit.text) for unit in units)
        if self._additive or estimate > 2 * self._budget:
            return estimate
        return self._count_tokens(_join(units))

    def _fits(self, units: Sequence[_Unit]) -> bool:
        return self._tokens(units) <= self._budget

    def pack(self, blocks: Sequence[_Block]) -> list[_Pack]:
        self._kinds = [block.kind for block in blocks]
        queue = deque(_items(blocks))
        packs: list[_Pack] = []
        current: list[_Unit] = []
        carried = 0  # how many units at the start of ``current`` repeat the pack before

        def close_before(item: _Item | None) -> None:
            """Emit ``current``; ``item`` goes back to the queue, to be placed again
            after whatever the pack gives back."""
            nonlocal current, carried
            if item is not None:
                queue.appendleft(item)
            carry = self._close(current, carried, queue, packs)
            if carry is None:  # all of it went back to the queue
                current = current[:carried]
            else:
                current, carried = carry, len(carry)

        while queue or len(current) > carried:
            if not queue:
                close_before(None)  # the last pack
                continue
            item = queue.popleft()
            if self._fits([*current, *item.units]):
                current.extend(item.units)
                continue
            if item.level < _WORDS and self._fits(item.units):
                # It fits a pack of its own: keep it whole and start the next pack.
                if len(current) > carried:
                    close_before(item)
                    continue
                current = self._trim_carry(current, item.units)
                carried = len(current)
                current.extend(item.units)
                continue
            if item.level < _SENTENCE:
                queue.extendleft(reversed(self._split(item)))
                continue
            # A sentence longer than a pack, or the rest of one: as many words as fit here.
            head, rest = self._take_words(current, item.units[0])
            if head is None and len(current) > carried:
                close_before(item)
                continue
            if head is None:  # not even after the carry: drop it
                current, carried = [], 0
                head, rest = self._take_words(current, item.units[0], at_least_one=True)
            assert head is not None
            current.append(head)
            if rest is not None:
                queue.appendleft(_Item((rest,), _WORDS))
        return packs

    def _close(
        self, units: list[_Unit], carried: int, queue: deque[_Item], packs: list[_Pack]
    ) -> list[_Unit] | None:
        """Emit ``units`` as a pack and return the carry for the next one.

        When the count of the whole pack exceeds the budget (the counter is not
        additive), the last units go back to the queue; ``None`` if none is left.
        """
        units = list(units)
        was_exact = not self._additive
        while True:
            text = _join(units)
            tokens = self._count_tokens(text)
            if tokens != self._overhead + sum(self._cost(unit.text) for unit in units):
                self._additive = False
            if tokens <= self._budget:
                break
            if len(units) - carried > 1:
                queue.appendleft(_Item((units.pop(),), _SENTENCE))
            elif carried:
                units.pop(0)
                carried -= 1
            elif was_exact:
                break  # a piece that cannot be cut finer: the only oversized pack
            else:
                queue.appendleft(_Item((units.pop(),), _BLOCK))
                return None
        packs.append(_Pack(tuple(units), text, tokens))
        return self._carry(units)

    def _split(self, item: _Item) -> list[_Item]:
        if item.level == _RUN:
            return [_Item((unit,), _BLOCK) for unit in item.units]
        (unit,) = item.units
        code = self._kinds[unit.block] == "code"
        items: list[_Item] = []
        for sentence in _sentences(unit.text, unit.block, unit.sep, code):
            parts = self._pre_cut(sentence)
            level = _SENTENCE if len(parts) == 1 else _WORDS
            items.extend(_Item((part,), level) for part in parts)
        return items

    def _pre_cut(self, unit: _Unit) -> list[_Unit]:
        """A sentence of far more words (or a word of far more characters) than a
        pack holds, cut into pieces of a few packs' length, so that no step
        handles the whole of it again for every pack it fills."""
        words = unit.text.split(" ")
        step = 2 * self._budget
        if len(words) > 2 * step:
            texts, joiner = [" ".join(words[i : i + step]) for i in range(0, len(words), step)], " "
        elif len(unit.text) > 32 * step:
            size = 16 * step
            texts, joiner = [unit.text[i : i + size] for i in range(0, len(unit.text), size)], ""
        else:
            return [unit]
        return [
            _Unit(text, unit.block, unit.sep if i == 0 else joiner) for i, text in enumerate(texts)
        ]

    def _take_words(
        self, current: Sequence[_Unit], unit: _Unit, *, at_least_one: bool = False
    ) -> tuple[_Unit | None, _Unit | None]:
        """The longest run of ``unit``'s first words that fits after ``current``,
        and the rest of ``unit``; ``None`` for the run if not even one word fits.

        With ``at_least_one`` (``current`` is then empty), a first word longer
        than a pack is cut between characters.
        """
        words, joiner = _words(unit.text)

        def fits(text: str) -> bool:
            return self._fits([*current, _Unit(text, unit.block, unit.sep)])

        n = _longest(len(words), lambda n: fits(joiner.join(words[:n])))
        if n == 0 and not at_least_one:
            return None, None
        if n == 0 and joiner:
            first = words[0]
            cut = max(1, _longest(len(first) - 1, lambda k: fits(first[:k])))
            rest = " ".join([first[cut:], *words[1:]])
            return _Unit(first[:cut], unit.block, unit.sep), _Unit(rest, unit.block, "")
        n = max(n, 1)
        head = _Unit(joiner.join(words[:n]), unit.block, unit.sep)
        rest_unit = _Unit(joiner.join(words[n:]), unit.block, joiner) if n < len(words) else None
        return head, rest_unit

    def _carry(self, units: Sequence[_Unit]) -> list[_Unit]:
        """The end of a pack, about ``overlap`` tokens of whole sentences, or the
        last words when the last sentence alone is longer."""
        if self._overlap == 0:
            return []
        pieces: list[_Unit] = []
        for unit in units:
            code = self._kinds[unit.block] == "code"
            pieces.extend(_sentences(unit.text, unit.block, unit.sep, code))
        tail: list[_Unit] = []
        for index in range(len(pieces) - 1, -1, -1):
            piece = pieces[index]
            if index > 0:  # never the whole pack
                candidate = [piece, *tail]
                if self._tokens(candidate) <= self._overlap:
                    tail = candidate
                    continue
            if self._tokens(tail) < self._overlap // 2:
                tail = self._carry_words(piece, tail)
            break
        return tail

    def _carry_words(self, piece: _Unit, tail: list[_Unit]) -> list[_Unit]:
        """``tail`` after the last words of ``piece`` that fit the overlap (never
        all of them); the last characters only of a word longer than a pack."""
        words, joiner = _words(piece.text)
        if not joiner and self._tokens([piece]) <= self._budget:
            return tail  # a one-word sentence is carried whole or not at all

        def part(n: int) -> _Unit:
            return _Unit(joiner.join(words[-n:]), piece.block, piece.sep)

        n = _longest(len(words) - 1, lambda n: self._tokens([part(n), *tail]) <= self._overlap)
        return [part(n), *tail] if n else tail

    def _trim_carry(self, carry: list[_Unit], units: Sequence[_Unit]) -> list[_Unit]:
        """Drop carried text from the front until ``units`` fit after it."""
        while carry and not self._fits([*carry, *units]):
            carry = carry[1:]
        return carry


def _items(blocks: Sequence[_Block]) -> list[_Item]:
    """Blocks as items to pack: runs of list items or of table rows stay together."""
    items: list[_Item] = []
    run: list[_Unit] = []
    run_kind = ""
    for index, block in enumerate(blocks):
        unit = _Unit(block.text, index, "\n")
        if block.kind in ("list_item", "table_row") and block.kind == run_kind:
            run.append(unit)
            continue
        if run:
            items.append(_Item(tuple(run), _RUN if len(run) > 1 else _BLOCK))
        run, run_kind = [unit], block.kind
    if run:
        items.append(_Item(tuple(run), _RUN if len(run) > 1 else _BLOCK))
    return items


def _longest(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest n in 0..limit with ``fits(n)``, for ``fits`` true up to some n.

    Gallops up from 1, so a probe is never much longer than the answer: a huge
    sentence is not counted whole to find that its first dozen words fit.
    """
    if limit <= 0 or not fits(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits(high):
        low, high = high, high * 2
    high = min(high, limit + 1)  # fits(low) is true, fits(high) false or out of range
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low
