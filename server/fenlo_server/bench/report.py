"""The benchmark's outputs: the targets, the table, the JSON summary and the plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# The keys `fenlo bench --json` promises on its last line.
SUMMARY_KEYS = (
    "baseline_turns_per_s",
    "fenlo_turns_per_s",
    "turns_ratio",
    "turns_ratio_rag",
    "baseline_ttft_p50_ms",
    "fenlo_ttft_p50_ms",
    "baseline_ttft_p99_ms",
    "fenlo_ttft_p99_ms",
    "added_ttft_p50_ms",
    "added_ttft_p50_ms_rag",
    "query_embed_p50_ms",
    "baseline_idle_stream_kib",
    "fenlo_idle_stream_kib",
    "ttft_ratio_history_1000_vs_10",
    "vector_p50_ms_100k",
    "numpy_p50_ms_100k",
    "ann_recall_at_10",
    "ingest_chunks_per_s",
    "failover_first_token_ms",
    "router_added_ttft_p50_ms",
    "router_cpu_ratio",
)


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, holds) for each of the issue's targets."""

    def row(name: str, measured: str, holds: bool) -> tuple[str, str, bool]:
        return name, measured, bool(holds)

    embed = r.get("query_embed_p50_ms", math.nan)
    return [
        row(
            "turns/s at 50 streams ≥ 0.5× baseline",
            f"{r['turns_ratio']:.2f}×",
            r["turns_ratio"] >= 0.5,
        ),
        row(
            "turns/s at 50 streams, retrieval on ≥ 0.25× baseline",
            f"{r['turns_ratio_rag']:.2f}×",
            r["turns_ratio_rag"] >= 0.25,
        ),
        row(
            "added TTFT p50 at 1 stream ≤ 2 ms",
            f"{r['added_ttft_p50_ms']:.2f} ms",
            r["added_ttft_p50_ms"] <= 2,
        ),
        row(
            "added TTFT p50, retrieval on ≤ embedding p50 + 3 ms",
            f"{r['added_ttft_p50_ms_rag']:.2f} ms (limit {embed + 3:.2f})",
            r["added_ttft_p50_ms_rag"] <= embed + 3,
        ),
        row(
            "TTFT p50 at 50 streams ≤ 2× baseline",
            f"{r['ttft_p50_ratio']:.2f}×",
            r["ttft_p50_ratio"] <= 2,
        ),
        row(
            "TTFT p99 at 50 streams ≤ 2× baseline",
            f"{r['ttft_p99_ratio']:.2f}×",
            r["ttft_p99_ratio"] <= 2,
        ),
        row(
            "memory per idle stream ≤ 4× baseline",
            f"{r['fenlo_idle_stream_kib']:.1f} vs {r['baseline_idle_stream_kib']:.1f} KiB",
            r["fenlo_idle_stream_kib"] <= 4 * r["baseline_idle_stream_kib"],
        ),
        row(
            "TTFT, 1,000 vs 10 messages of history ≤ 1.2×",
            f"{r['ttft_ratio_history_1000_vs_10']:.2f}×",
            r["ttft_ratio_history_1000_vs_10"] <= 1.2,
        ),
        row(
            "vector search at 100k ≤ numpy, recall@10 ≥ 0.95",
            f"{r['vector_p50_ms_100k']:.2f} vs {r['numpy_p50_ms_100k']:.2f} ms, "
            f"recall {r['ann_recall_at_10']:.3f}",
            r["vector_p50_ms_100k"] <= r["numpy_p50_ms_100k"] and r["ann_recall_at_10"] >= 0.95,
        ),
        row(
            "failover to the secondary's first token ≤ 50 ms",
            f"{r['failover_first_token_ms']:.1f} ms",
            r["failover_first_token_ms"] <= 50,
        ),
        row(
            "router added TTFT p50 ≤ 1 ms",
            f"{r['router_added_ttft_p50_ms']:.2f} ms",
            r["router_added_ttft_p50_ms"] <= 1,
        ),
        row(
            "router CPU per reply ≤ 1.25× bare SDK",
            f"{r['router_cpu_ratio']:.2f}×",
            r["router_cpu_ratio"] <= 1.25,
        ),
    ]


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON: the promised keys first, then every other scalar figure."""
    out = {key: r[key] for key in SUMMARY_KEYS}
    for key, value in r.items():
        if key not in out and isinstance(value, int | float | bool):
            out[key] = value
    out["targets_met"] = sum(holds for _, _, holds in targets(r))
    out["targets"] = len(targets(r))
    return out


def table(r: dict[str, Any]) -> str:
    lines = [
        f"{'':<22}{'turns/s':>9}{'tokens/s':>10}{'ttft p50':>10}{'p95':>8}{'p99':>8}"
        f"{'turn p50':>10}{'p99':>8}{'cpu ms/turn':>13}",
    ]
    for key, run in r["load"].items():
        lines.append(
            f"{key:<22}{run['turns_per_s']:>9.1f}{run['tokens_per_s']:>10.0f}"
            f"{run['ttft_p50_ms']:>10.2f}{run['ttft_p95_ms']:>8.2f}{run['ttft_p99_ms']:>8.2f}"
            f"{run['turn_p50_ms']:>10.1f}{run['turn_p99_ms']:>8.1f}{run['cpu_ms_per_turn']:>13.2f}"
        )
    lines.append("(times in ms; @N is N concurrent streams; _rag is retrieval on)")
    lines.append("")
    width = max(len(name) for name, _, _ in targets(r))
    for name, measured, holds in targets(r):
        lines.append(f"{'ok  ' if holds else 'MISS'}  {name:<{width}}  {measured}")
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    """Latency distributions of Fenlo vs the baseline, and the scale curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    samples = r["samples"]["ttft_ms"]
    streams = r["streams"]
    for ax, count in ((axes[0][0], 1), (axes[0][1], streams)):
        for name in ("baseline", "fenlo", "fenlo_rag"):
            values = np.sort(samples.get(f"{name}@{count}", []))
            if len(values):
                ax.plot(values, np.linspace(0, 1, len(values)), label=name)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the decades only: no overlap
        ax.set_xlabel("time to first token (ms, log)")
        ax.set_ylabel("fraction of turns")
        ax.set_title(f"Time to first token, {count} stream{'s' if count > 1 else ''}")
        ax.legend()
    ax = axes[1][0]
    history = r["history_ttft_p50_ms"]
    workspaces = r["workspaces_ttft_p50_ms"]
    ax.plot([int(k) for k in history], list(history.values()), "o-", label="prior messages")
    ax.plot([int(k) for k in workspaces], list(workspaces.values()), "s-", label="workspaces")
    ax.set_xscale("log")
    ax.set_xlabel("count (log)")
    ax.set_ylabel("first-turn TTFT p50 (ms)")
    ax.set_title("Scale: history length and workspace count")
    ax.legend()
    ax = axes[1][1]
    sizes = [10_000, 100_000]
    ax.plot(
        sizes,
        [r.get("vector_p50_ms_10k", math.nan), r["vector_p50_ms_100k"]],
        "o-",
        label="vector store",
    )
    ax.plot(
        sizes,
        [r.get("numpy_p50_ms_10k", math.nan), r["numpy_p50_ms_100k"]],
        "s-",
        label="brute-force numpy",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("chunks (log)")
    ax.set_ylabel("search p50 (ms, log)")
    ax.set_title(f"Vector search (recall@10 {r['ann_recall_at_10']:.3f})")
    ax.legend()
    fig.suptitle("Fenlo vs bare grpc.aio baseline, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
