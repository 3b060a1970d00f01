"""BM25 over a workspace's passages (Okapi BM25, k1=1.2, b=0.75).

An inverted index in plain dictionaries and numpy arrays: building is linear in
the text, a query touches only the postings of its words.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import numpy.typing as npt

from fenlo_server.text.words import content_words


class Bm25Index:
    def __init__(self, texts: list[str], *, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self.size = len(texts)
        lengths = np.zeros(self.size, dtype=np.float32)
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, text in enumerate(texts):
            words = content_words(text)
            lengths[i] = len(words)
            for word, count in Counter(words).items():
                postings[word].append((i, count))
        self._average = float(lengths.mean()) if self.size else 0.0
        self._lengths = lengths
        self._postings: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = {
            word: (
                np.fromiter((d for d, _ in items), dtype=np.int32, count=len(items)),
                np.fromiter((c for _, c in items), dtype=np.float32, count=len(items)),
            )
            for word, items in postings.items()
        }

    def idf(self, word: str) -> float:
        found = self._postings.get(word)
        frequency = len(found[0]) if found else 0
        return math.log(1.0 + (self.size - frequency + 0.5) / (frequency + 0.5))

    def search(
        self, query: str, k: int, allowed: npt.NDArray[np.bool_] | None = None
    ) -> list[tuple[int, float]]:
        """The ``k`` best passages as (position, score), best first; score > 0 only."""
        if not self.size:
            return []
        scores = np.zeros(self.size, dtype=np.float32)
        norm = self.k1 * (1.0 - self.b + self.b * self._lengths / max(self._average, 1e-9))
        for word in set(content_words(query)):
            found = self._postings.get(word)
            if found is None:
                continue
            docs, counts = found
            weight = self.idf(word)
            scores[docs] += weight * counts * (self.k1 + 1.0) / (counts + norm[docs])
        if allowed is not None:
            scores[~allowed] = 0.0
        candidates = np.flatnonzero(scores > 0)
        if not len(candidates):
            return []
        if len(candidates) > k:
            candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
        ordered = candidates[np.argsort(-scores[candidates], kind="stable")]
        return [(int(i), float(scores[i])) for i in ordered]
