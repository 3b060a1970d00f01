"""The retrieval evaluation (bench/kb_eval) as a regression check: the dataset is
valid, and the server's hybrid retrieval keeps its quality on it."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "kb_eval"))

import evaluate  # noqa: E402
import run  # noqa: E402


def test_the_dataset_is_valid() -> None:
    assert evaluate.validate_dataset() == []


async def test_hybrid_retrieval_quality_on_the_evaluation_set(tmp_path: Path) -> None:
    search, workspace, ingestion = await run.build(tmp_path)
    assert ingestion["chunks"] > 20

    async def retriever(question: str) -> list[evaluate.Hit]:
        results = await search.search(workspace, question, 5)
        return [
            evaluate.Hit(h.chunk.source_uri, f"{h.chunk.text}\n{h.context}", h.score)
            for h in results.hits
        ]

    report = await evaluate.evaluate(retriever, evaluate.load_questions(), k=5, name="hybrid")
    overall = report.overall
    kinds = {s.group: s for s in report.by("kind")}
    assert overall.hit_at_k >= 0.95, report.to_markdown()
    assert overall.answer_in_top_k >= 0.85, report.to_markdown()
    assert kinds["other_language"].hit_at_k >= 0.9, report.to_markdown()
