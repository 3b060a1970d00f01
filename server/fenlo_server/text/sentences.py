"""Splits streamed text into complete sentences as it arrives (for text-to-speech).

A sentence ends at `.`, `!`, `?` or `…` (optionally followed by closing quotes or
brackets, or a citation marker such as `[1]`) followed by whitespace, or at a
line break. Common abbreviations ("e.g.", "Dr.") and decimal numbers do not
end a sentence. Each sentence is emitted exactly once; ``flush`` emits the rest.
"""

from __future__ import annotations

import re

_END = re.compile(r"""([.!?…]+["')\]]*(?:\s*\[\d+\])*[.!?]?)(\s+)|(\n+)""")
_ABBREVIATIONS = frozenset(
    "e.g i.e etc mr mrs ms dr prof sr jr st vs approx no fig inc ltd co corp sra srta".split()
)


class SentenceSplitter:
    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        """The sentences that ``text`` completes."""
        self._buffer += text
        sentences: list[str] = []
        start = 0
        for match in _END.finditer(self._buffer):
            if match.group(3) is None and _is_abbreviation(self._buffer[start : match.start()]):
                continue
            end = match.end(1) if match.group(3) is None else match.start(3)
            sentence = self._buffer[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = match.end()
        self._buffer = self._buffer[start:]
        return sentences

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []


def _is_abbreviation(text: str) -> bool:
    words = text.rsplit(None, 1)
    last = words[-1].lower().rstrip(".") if words else ""
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())
