"""Labelled example texts ("prototypes") embedded once, for the nearest-prototype
layers of the prompt guard and the intent classifier.

The embedding is made once per set: callers that arrive while it is being made
wait for the same embedding instead of starting their own. (A replica that had
just started took twenty streams' first turns at once, and each of them used to
embed every prototype again, one after the other on the embedder's thread: the
turns waited a minute.) A caller that gives up does not cancel the embedding
for the others; an embedding that failed is tried again by the next caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Generic, TypeVar

import numpy as np

from fenlo_server.knowledge.types import Embedder, Matrix, Vector

K = TypeVar("K")


class Prototypes(Generic[K]):
    """The examples of each label, in order, and (once embedded) their vectors."""

    def __init__(self, embedder: Embedder, examples: Mapping[K, Sequence[str]]) -> None:
        self.embedder = embedder
        self.texts: list[str] = []
        self.slices: list[tuple[K, int, int]] = []
        for label, texts in examples.items():
            self.slices.append((label, len(self.texts), len(self.texts) + len(texts)))
            self.texts.extend(texts)
        self._matrix: Matrix | None = None
        self._embedding: asyncio.Task[Matrix] | None = None

    @property
    def embedded(self) -> Matrix | None:
        """The vectors if they are embedded already, else None."""
        return self._matrix

    async def matrix(self) -> Matrix:
        """One row per text, embedded on the first call (shared by concurrent calls)."""
        if self._matrix is not None:
            return self._matrix
        loop = asyncio.get_running_loop()
        task = self._embedding
        if task is None or task.get_loop() is not loop or _failed(task):
            task = self._embedding = loop.create_task(self._embed())
        return await asyncio.shield(task)

    async def _embed(self) -> Matrix:
        matrix = await self.embedder.embed_documents(self.texts)
        self._matrix = matrix
        return matrix

    def cosines(self, matrix: Matrix, vector: Vector) -> list[tuple[K, np.ndarray, int]]:
        """Per label: the cosines of its examples with ``vector`` and its first index."""
        every = matrix @ np.asarray(vector, dtype=np.float32)
        return [(label, every[start:end], start) for label, start, end in self.slices]


def _failed(task: asyncio.Task[Matrix]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
