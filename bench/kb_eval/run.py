"""Evaluate Fenlo's retrieval on the Harbour Dental Clinic set: BM25 only,
vectors only, and hybrid, through the same ingestion and search code the
server runs.

    python bench/kb_eval/run.py                 # prints the tables
    python bench/kb_eval/run.py --write         # also writes docs/knowledge-eval.md and
                                                # bench/results/kb_eval.json

Documents are ingested into a temporary SQLite database with the default
embedders (MiniLM and USE multilingual), exactly as an upload would be.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "kb_eval"))

from evaluate import Hit, Report, evaluate, load_questions  # noqa: E402

from fenlo_server.config import Settings  # noqa: E402
from fenlo_server.jobs.factory import build_ingestor  # noqa: E402
from fenlo_server.knowledge.factory import build_embedders, build_search  # noqa: E402
from fenlo_server.knowledge.search import KnowledgeSearch, SearchOptions  # noqa: E402
from fenlo_server.storage import migrate  # noqa: E402
from fenlo_server.storage.db import Database  # noqa: E402
from fenlo_server.storage.knowledge import DocumentRepository, SqlKnowledgeStore  # noqa: E402
from fenlo_server.storage.repositories import WorkspaceStore  # noqa: E402

DOCS = ROOT / "bench" / "kb_eval" / "docs"
MODES = {
    "bm25": SearchOptions(use_vectors=False),
    "vectors": SearchOptions(use_bm25=False),
    "hybrid": SearchOptions(),
}


async def build(directory: Path) -> tuple[KnowledgeSearch, str, dict[str, float]]:
    settings = Settings(data_dir=directory, database_url=f"sqlite+aiosqlite:///{directory}/kb.db")
    db = Database(settings.resolved_database_url())
    await migrate.upgrade(db)
    async with db.unscoped("evaluation workspace") as session:
        workspace = await WorkspaceStore(session).create(
            display_name="Harbour Dental Clinic", settings={}, quotas={}
        )
    embedders = build_embedders(settings)
    ingestor = build_ingestor(settings, db, embedders)
    started = time.perf_counter()
    chunks = 0
    for path in sorted(DOCS.iterdir()):
        async with db.workspace(workspace.id) as session:
            row = await DocumentRepository(session).create(
                title="",
                source_uri=path.name,
                mime_type="",
                tags=[],
                content=path.read_bytes(),
                content_sha256="",
            )
        outcome = await ingestor.process(workspace.id, row.id, row.generation)
        async with db.workspace(workspace.id) as session:
            done = await DocumentRepository(session).get(row.id)
        assert outcome == "ready" and done is not None, (path.name, outcome)
        chunks += done.chunk_count
    seconds = time.perf_counter() - started
    search = build_search(settings, SqlKnowledgeStore(db), embedders, None)
    return search, workspace.id, {"chunks": chunks, "ingest_seconds": seconds}


async def run(write: bool) -> list[Report]:
    questions = load_questions()
    with tempfile.TemporaryDirectory() as tmp:
        search, workspace, ingestion = await build(Path(tmp))
        reports = []
        for name, options in MODES.items():

            async def retriever(question: str, options: SearchOptions = options) -> list[Hit]:
                results = await search.search(workspace, question, 5, options=options)
                return [
                    Hit(h.chunk.source_uri, f"{h.chunk.text}\n{h.context}", h.similarity or h.score)
                    for h in results.hits
                ]

            reports.append(await evaluate(retriever, questions, k=5, name=name))
    print(
        f"{ingestion['chunks']} passages from {len(list(DOCS.iterdir()))} documents "
        f"in {ingestion['ingest_seconds']:.1f}s\n"
    )
    for report in reports:
        print(f"## {report.name}\n\n{report.to_markdown()}\n")
    if write:
        write_results(reports, ingestion)
    return reports


def write_results(reports: list[Report], ingestion: dict[str, float]) -> None:
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "kb_eval.json").write_text(
        json.dumps({"ingestion": ingestion, "reports": [r.to_dict() for r in reports]}, indent=2)
    )
    rows = [
        "| retrieval | kind | n | hit@1 | hit@5 | MRR | answer fact in top 5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        for summary in [report.overall, *report.by("kind")]:
            cells = [
                report.name,
                summary.group,
                str(summary.questions),
                *(f"{v:.3f}" for v in (summary.hit_at_1, summary.hit_at_k, summary.mrr)),
                f"{summary.answer_in_top_k:.3f}",
            ]
            rows.append(f"| {' | '.join(cells)} |")
    unanswerable = []
    for report in reports:
        distribution = report.score_distribution()
        unanswerable.append(
            f"| {report.name} | {distribution['answerable'].get('median', 0):.3f} | "
            f"{distribution['unanswerable'].get('median', 0):.3f} | "
            f"{distribution['unanswerable'].get('max', 0):.3f} |"
        )
    page = (ROOT / "docs" / "knowledge-eval.md").read_text()
    begin, end = "<!-- BEGIN results -->", "<!-- END results -->"
    table = "\n".join(rows)
    unanswered = "\n".join(
        [
            "| retrieval | top score, answerable (median) | top score, unanswerable (median) | "
            "unanswerable (max) |",
            "|---|---|---|---|",
            *unanswerable,
        ]
    )
    block = (
        f"{begin}\n{int(ingestion['chunks'])} passages from the {len(list(DOCS.iterdir()))} "
        f"documents, k = 5.\n\n{table}\n\n{unanswered}\n{end}"
    )
    head, _, rest = page.partition(begin)
    _, _, tail = rest.partition(end)
    (ROOT / "docs" / "knowledge-eval.md").write_text(head + block + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.write))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
