"""The benchmark harness at a tiny size: real processes (Fenlo, the baseline, the
client load), every figure present, the outputs written. No timing assertions:
the harness measures, the tests check that what it measures is sound."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fenlo_server.bench import harness, micro, report
from fenlo_server.bench.command import _clean

TINY = harness.Plan(
    repeats=1,
    turns_one=3,
    streams=4,
    turns_many=2,
    idle_streams=20,
    history=30,
    workspaces=4,
    workspace_samples=3,
    scale_turns=2,
    rate=2000.0,
    loop="uvloop",
)
MICRO = micro.Plan(
    vector_sizes=(("10k", 300), ("100k", 600)),
    ann_threshold=500,
    queries=5,
    embed_repeats=2,
    ingest_repeats=1,
    ingest_paragraphs=4,
    failover_repeats=1,
    replies=2,
    warmup_replies=1,
)


async def test_the_harness_measures_fenlo_and_the_baseline_and_writes_its_outputs(
    tmp_path: Path,
) -> None:
    results = harness.run(plan=TINY, micro=False)
    results.update(await micro.run_micro(plan=MICRO))

    assert results["failed_turns"] == 0
    load = results["load"]
    assert set(load) == {
        f"{name}@{count}"
        for name in ("baseline", "fenlo", "baseline_rag", "fenlo_rag")
        for count in (1, TINY.streams)
    }
    for key, run in load.items():
        count = int(key.split("@")[1])
        turns = TINY.turns_one if count == 1 else TINY.streams * TINY.turns_many
        assert run["turns"] == turns * TINY.repeats, key
        assert run["turns_per_s"] > 0 and run["ttft_p50_ms"] > 0
        assert run["ttft_p50_ms"] <= run["ttft_p99_ms"] <= run["turn_p99_ms"]
    # The baseline answers as long as Fenlo does (calibrated in the same run).
    tokens = results["tokens_per_turn"]
    assert load["baseline@1"]["tokens_per_turn"] == tokens["plain"]
    assert load["baseline_rag@1"]["tokens_per_turn"] == tokens["rag"]
    assert abs(load["fenlo@1"]["tokens_per_turn"] - tokens["plain"]) <= 1
    # Retrieval really runs in the rag workspace: its answers come from the guide.
    assert tokens["rag"] != tokens["plain"]
    assert results["fenlo_idle_stream_kib"] > 0 and results["baseline_idle_stream_kib"] > 0
    samples = results["samples"]
    assert len(samples["history_ttft_ms"]["10"]) == TINY.scale_turns
    assert len(samples["workspaces_ttft_ms"][str(TINY.workspaces)]) == TINY.workspaces - 1

    line = report.summary(results)
    assert list(line)[: len(report.SUMMARY_KEYS)] == list(report.SUMMARY_KEYS)
    assert all(math.isfinite(line[key]) for key in report.SUMMARY_KEYS)
    json.dumps(_clean(line), allow_nan=False)
    assert line["turns_ratio"] == results["fenlo_turns_per_s"] / results["baseline_turns_per_s"]
    table = report.table(results)
    assert "fenlo_rag@4" in table and "router added TTFT" in table
    report.plot(results, tmp_path / "latest.png")
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
