"""Removes the text a continuing provider repeats from the answer already sent.

After a failover mid-answer, the next provider is asked to continue from the
text already delivered. Models often restate the last few words first. The
new output is held back while it could still be such a restatement (while it
occurs inside the tail of what was sent); then the longest prefix of it that
repeats the end of the sent text, in whole words, is dropped, and everything
after passes straight through.
"""

from __future__ import annotations

WINDOW = 256  # how much of the sent text's tail a restatement may repeat
MIN_OVERLAP = 3  # shorter coincidences ("a", "is") are not treated as repeats


class OverlapTrimmer:
    def __init__(self, sent: str) -> None:
        self._tail = sent[-WINDOW:]
        # The character before the tail ("" at the start of the text): a repeat of the
        # whole tail starts a word only if the tail was not cut from inside one.
        self._before = sent[-WINDOW - 1] if len(sent) > WINDOW else ""
        self._pending = ""
        self._decided = not self._tail

    def feed(self, text: str) -> str:
        """The part of ``text`` to send now ("" while undecided)."""
        if self._decided:
            return text
        self._pending += text
        if self._pending.lstrip() in self._tail:
            # Could still be a restatement of the tail: wait for more. (Even when it
            # is the whole tail: the next character tells whether its last word ends.)
            return ""
        return self._decide()

    def flush(self) -> str:
        """At the end of the stream: whatever was held back, minus the repeat."""
        return "" if self._decided else self._decide()

    def _decide(self) -> str:
        self._decided = True
        pending, tail = self._pending, self._tail
        self._pending = ""
        # A restatement may begin with a space where the sent text has none (at its start).
        text = pending.lstrip()
        for size in range(min(len(text), len(tail)), MIN_OVERLAP - 1, -1):
            repeat = text[:size]
            if not tail.endswith(repeat) or len(repeat.strip()) < MIN_OVERLAP:
                continue
            before = tail[-size - 1] if size < len(tail) else self._before
            starts_word = not before.isalnum() or not text[0].isalnum()
            ends_word = size == len(text) or not (text[size - 1].isalnum() and text[size].isalnum())
            if starts_word and ends_word:
                return text[size:]
        return pending
