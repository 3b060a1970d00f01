"""Prototypes: embedded once, however many callers arrive before the embedding is
done; a caller that gives up does not cancel it for the others; a failed
embedding is tried again."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fenlo_server.knowledge.types import Matrix, Vector
from fenlo_server.pipeline.analysis.intent import IntentClassifier
from fenlo_server.pipeline.analysis.prototypes import Prototypes

EXAMPLES = {"a": ["one", "two"], "b": ["three"]}


class SlowEmbedder:
    """Counts embed_documents calls; each takes until ``release`` is set."""

    model = "slow-test"
    dimensions = 3

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.release = asyncio.Event()

    async def embed_documents(self, texts: list[str]) -> Matrix:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the embedder is down")
        return np.eye(len(texts), 3, dtype=np.float32)

    async def embed_query(self, text: str) -> Vector:
        return np.array([1.0, 0.0, 0.0], dtype=np.float32)


async def test_concurrent_first_callers_share_one_embedding() -> None:
    embedder = SlowEmbedder()
    prototypes = Prototypes(embedder, EXAMPLES)
    waiting = [asyncio.create_task(prototypes.matrix()) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert embedder.calls == 1
    embedder.release.set()
    matrices = await asyncio.gather(*waiting)
    assert all(m is matrices[0] for m in matrices)
    assert matrices[0].shape == (3, 3)
    assert await prototypes.matrix() is matrices[0] and embedder.calls == 1
    assert prototypes.slices == [("a", 0, 2), ("b", 2, 3)]


async def test_a_caller_that_gives_up_does_not_cancel_the_embedding() -> None:
    embedder = SlowEmbedder()
    prototypes = Prototypes(embedder, EXAMPLES)
    impatient = asyncio.create_task(prototypes.matrix())
    patient = asyncio.create_task(prototypes.matrix())
    await asyncio.sleep(0.01)
    impatient.cancel()
    embedder.release.set()
    assert (await patient).shape == (3, 3)
    assert embedder.calls == 1 and prototypes.embedded is not None


async def test_a_failed_embedding_is_tried_again() -> None:
    embedder = SlowEmbedder()
    embedder.fail = True
    embedder.release.set()
    prototypes = Prototypes(embedder, EXAMPLES)
    with pytest.raises(RuntimeError):
        await prototypes.matrix()
    embedder.fail = False
    assert (await prototypes.matrix()).shape == (3, 3)
    assert embedder.calls == 2


async def test_the_intent_classifier_embeds_its_prototypes_once_for_concurrent_turns() -> None:
    embedder = SlowEmbedder()
    classifier = IntentClassifier(embedder)
    turns = [asyncio.create_task(classifier.classify(f"question {i}?")) for i in range(10)]
    await asyncio.sleep(0.01)
    embedder.release.set()
    await asyncio.gather(*turns)
    assert embedder.calls == 1
