"""The benchmark: Fenlo against a bare ``grpc.aio`` baseline, measured in the same run.

Every figure that depends on this (shared, noisy) machine is reported next to
the baseline measured minutes apart in the same run, and the targets are
ratios. Three kinds of process: the Fenlo server (:mod:`.fenlo_proc`), the
baseline server (:mod:`.baseline`) and the client load (:mod:`.load`); the
micro-benchmarks (vector search, embedding, ingestion, failover, router) run
in a process of their own too (:mod:`.micro`).

``fenlo bench [--quick] [--json] [--write]``; ``make bench`` is
``fenlo bench --write``, which updates ``bench/results/latest.json`` and
``latest.png``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

PYTHON = sys.executable
TEXT_PLAIN = ["Hello, can you tell me what you offer?", "Thanks, and what does it cost?"]
TEXT_RAG = ["When are you open on Saturday?", "How much is a cappuccino?"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Plan:
    """How much to measure; ``quick`` fits in a few minutes on two cores."""

    repeats: int
    turns_one: int  # turns of the single stream
    streams: int
    turns_many: int  # turns of each of the concurrent streams
    idle_streams: int
    history: int
    workspaces: int
    workspace_samples: int
    scale_turns: int
    rate: float
    loop: str

    @classmethod
    def make(cls, quick: bool, loop: str) -> Plan:
        if quick:
            return cls(3, 30, 50, 6, 1000, 1000, 1000, 60, 15, 500.0, loop)
        return cls(5, 100, 50, 20, 1000, 1000, 1000, 300, 40, 500.0, loop)


# ---------------------------------------------------------------- processes


class Server:
    """A server process that prints one JSON line once it listens."""

    def __init__(self, args: list[str], log: IO[str], loop: str = "asyncio") -> None:
        self.loop = loop  # the client load runs on the same loop as the servers
        self.process = subprocess.Popen(
            [PYTHON, "-m", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{args[0]} exited before it listened (see the bench log)")
        self.info: dict[str, Any] = json.loads(line)
        self.target = f"127.0.0.1:{self.info['port']}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _load(
    server: Server, spec: dict[str, Any], *, idle: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run one client-load process against ``server``; in idle mode call ``idle()``
    while the streams are open."""
    spec = {"target": server.target, "loop": server.loop, **spec}
    process = subprocess.Popen(
        [PYTHON, "-m", "fenlo_server.bench.load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(spec) + "\n")
    process.stdin.flush()
    if idle is not None:
        ready = process.stdout.readline()
        if not ready:
            raise RuntimeError("the idle-stream client died")
        idle()
        process.stdin.write("\n")
        process.stdin.flush()
    out, _ = process.communicate(timeout=900)
    if process.returncode != 0:
        raise RuntimeError(f"the client load failed ({process.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else float("nan")


# ---------------------------------------------------------------- measurements


def drive(
    server: Server,
    streams: list[dict[str, Any]],
    turns: int,
    texts: list[str],
) -> dict[str, Any]:
    """One load run: turns/s, tokens/s, ttft and turn percentiles, server CPU per turn."""
    cpu = server.cpu_s()
    result = _load(
        server,
        {
            "mode": "turns",
            "streams": streams,
            "turns": turns,
            "texts": texts,
        },
    )
    cpu = server.cpu_s() - cpu
    turns_done = max(result["turns"], 1)
    return {
        "turns_per_s": result["turns"] / result["wall_s"],
        "tokens_per_s": result["deltas"] / result["wall_s"],
        "ttft_p50_ms": pct(result["ttft_ms"], 50),
        "ttft_p95_ms": pct(result["ttft_ms"], 95),
        "ttft_p99_ms": pct(result["ttft_ms"], 99),
        "turn_p50_ms": pct(result["turn_ms"], 50),
        "turn_p99_ms": pct(result["turn_ms"], 99),
        "cpu_ms_per_turn": cpu * 1000 / turns_done,
        "turns": result["turns"],
        "failed": result["failed"],
        "errors": result["errors"],
        "ttft_ms": result["ttft_ms"],
        "tokens_per_turn": result["deltas"] / turns_done,
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over repeats; failures summed; samples pooled."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        if key in ("turns", "failed"):
            out[key] = sum(r[key] for r in runs)
        elif key == "errors":
            out[key] = [e for r in runs for e in r[key]][:5]
        elif key == "ttft_ms":
            out[key] = [v for r in runs for v in r[key]]
        else:
            out[key] = median([r[key] for r in runs])
    return out


def idle_memory(server: Server, stream: dict[str, Any], count: int, texts: list[str]) -> float:
    """KiB of server RSS per open stream that did one turn (after a warm-up of the same)."""
    warm = min(100, count)
    _load(
        server,
        {
            "mode": "turns",
            "streams": [stream] * warm,
            "turns": 1,
            "texts": texts,
        },
    )
    before = server.rss_kib()
    after: list[int] = []

    def measure() -> None:
        time.sleep(0.5)  # let the server settle
        after.append(server.rss_kib())

    result = _load(
        server,
        {"mode": "idle", "streams": [stream] * count, "texts": texts},
        idle=measure,
    )
    if result["failed"]:
        raise RuntimeError(f"idle streams failed: {result['errors']}")
    return float(after[0] - before) / max(int(result["open"]), 1)


def sequential_first_turns(
    server: Server, streams: list[dict[str, Any]], texts: list[str]
) -> list[float]:
    """Time to first token of the first turn of fresh streams, one after another."""
    ttft: list[float] = []
    for stream in streams:
        result = _load(
            server,
            {
                "mode": "turns",
                "streams": [stream],
                "turns": 1,
                "texts": texts,
            },
        )
        ttft += result["ttft_ms"]
    return ttft


@contextmanager
def servers(plan: Plan, workdir: Path, log: IO[str]) -> Iterator[tuple[Server, Server]]:
    fenlo = baseline = None
    try:
        fenlo = Server(
            [
                "fenlo_server.bench.fenlo_proc",
                "--data-dir",
                str(workdir / "fenlo"),
                "--rate",
                str(plan.rate),
                "--history",
                str(plan.history),
                "--workspaces",
                str(plan.workspaces),
                "--loop",
                plan.loop,
            ],
            log,
            plan.loop,
        )
        baseline = Server(
            ["fenlo_server.bench.baseline", "--rate", str(plan.rate), "--loop", plan.loop],
            log,
            plan.loop,
        )
        yield fenlo, baseline
    finally:
        for server in (fenlo, baseline):
            if server is not None:
                server.stop()


def run(
    quick: bool = True,
    loop: str = "asyncio",
    progress: IO[str] | None = None,
    *,
    plan: Plan | None = None,
    micro: bool = True,
) -> dict[str, Any]:
    """Measure; ``plan`` overrides the quick/full plan, ``micro=False`` leaves those out."""
    plan = plan or Plan.make(quick, loop)

    def say(message: str) -> None:
        if progress is not None:
            print(f"bench: {message}", file=progress, flush=True)

    started = time.monotonic()
    results: dict[str, Any] = {"quick": quick, "loop": loop, "rate_tokens_per_s": plan.rate}
    with (
        tempfile.TemporaryDirectory(prefix="fenlo-bench-") as tmp,
        open(Path(tmp) / "servers.log", "w") as log,
        servers(plan, Path(tmp), log) as (fenlo, baseline),
    ):
        info = fenlo.info
        plain, rag = info["plain"], info["rag"]
        say("servers up; calibrating the baseline's answer length")
        tokens_plain = round(drive(fenlo, [plain], 3, TEXT_PLAIN)["tokens_per_turn"])
        tokens_rag = round(drive(fenlo, [rag], 3, TEXT_RAG)["tokens_per_turn"])
        base_plain = {"token": "-", "parent": "b", "metadata": {"tokens": str(tokens_plain)}}
        base_rag = {"token": "-", "parent": "b", "metadata": {"tokens": str(tokens_rag)}}
        results["tokens_per_turn"] = {"plain": tokens_plain, "rag": tokens_rag}

        say(f"idle memory: {plan.idle_streams} open streams each")
        results["fenlo_idle_stream_kib"] = idle_memory(fenlo, plain, plan.idle_streams, TEXT_PLAIN)
        results["baseline_idle_stream_kib"] = idle_memory(
            baseline, base_plain, plan.idle_streams, TEXT_PLAIN
        )

        cases = {
            ("baseline", 1): (baseline, [base_plain], plan.turns_one, TEXT_PLAIN),
            ("fenlo", 1): (fenlo, [plain], plan.turns_one, TEXT_PLAIN),
            ("baseline_rag", 1): (baseline, [base_rag], plan.turns_one, TEXT_RAG),
            ("fenlo_rag", 1): (fenlo, [rag], plan.turns_one, TEXT_RAG),
            ("baseline", plan.streams): (
                baseline,
                [base_plain] * plan.streams,
                plan.turns_many,
                TEXT_PLAIN,
            ),
            ("fenlo", plan.streams): (
                fenlo,
                [plain] * plan.streams,
                plan.turns_many,
                TEXT_PLAIN,
            ),
            ("baseline_rag", plan.streams): (
                baseline,
                [base_rag] * plan.streams,
                plan.turns_many,
                TEXT_RAG,
            ),
            ("fenlo_rag", plan.streams): (
                fenlo,
                [rag] * plan.streams,
                plan.turns_many,
                TEXT_RAG,
            ),
        }
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {key: [] for key in cases}
        for repeat in range(plan.repeats):
            say(f"throughput, repeat {repeat + 1} of {plan.repeats}")
            for key, (server, streams, turns, texts) in cases.items():
                runs[key].append(drive(server, streams, turns, texts))
        load = {f"{name}@{c}": medians(r) for (name, c), r in runs.items()}

        say("scale: history and workspaces")
        short = sequential_first_turns(
            fenlo, [info["history_short"]] * plan.scale_turns, TEXT_PLAIN
        )
        long = sequential_first_turns(fenlo, [info["history_long"]] * plan.scale_turns, TEXT_PLAIN)
        one_ws = sequential_first_turns(fenlo, [plain] * plan.workspace_samples, TEXT_PLAIN)
        spread = info["workspaces"][1:]
        step = max(1, len(spread) // plan.workspace_samples)
        many_ws = sequential_first_turns(
            fenlo, spread[::step][: plan.workspace_samples], TEXT_PLAIN
        )
    say("micro-benchmarks")
    micro_results = _micro(quick) if micro else {}
    results.update(summarise(load, plan, short=short, long=long, one_ws=one_ws, many_ws=many_ws))
    results.update(micro_results)
    results["load"] = {k: {m: v for m, v in r.items() if m != "ttft_ms"} for k, r in load.items()}
    results["samples"] = {
        "ttft_ms": {k: r["ttft_ms"] for k, r in load.items()},
        "history_ttft_ms": {"10": short, str(plan.history): long},
        "workspaces_ttft_ms": {"1": one_ws, str(plan.workspaces): many_ws},
    }
    results["elapsed_s"] = time.monotonic() - started
    return results


def _micro(quick: bool) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, "-m", "fenlo_server.bench.micro", *([] if quick else ["--full"])],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)  # one (indented) JSON object
    return result


def summarise(
    load: dict[str, dict[str, Any]],
    plan: Plan,
    *,
    short: list[float],
    long: list[float],
    one_ws: list[float],
    many_ws: list[float],
) -> dict[str, Any]:
    c = plan.streams
    base, fen = load[f"baseline@{c}"], load[f"fenlo@{c}"]
    base_rag, fen_rag = load[f"baseline_rag@{c}"], load[f"fenlo_rag@{c}"]
    one_base, one_fen = load["baseline@1"], load["fenlo@1"]
    one_base_rag, one_fen_rag = load["baseline_rag@1"], load["fenlo_rag@1"]
    return {
        "streams": c,
        "baseline_turns_per_s": base["turns_per_s"],
        "fenlo_turns_per_s": fen["turns_per_s"],
        "turns_ratio": fen["turns_per_s"] / base["turns_per_s"],
        "baseline_rag_turns_per_s": base_rag["turns_per_s"],
        "fenlo_rag_turns_per_s": fen_rag["turns_per_s"],
        "turns_ratio_rag": fen_rag["turns_per_s"] / base_rag["turns_per_s"],
        "baseline_ttft_p50_ms": base["ttft_p50_ms"],
        "fenlo_ttft_p50_ms": fen["ttft_p50_ms"],
        "baseline_ttft_p99_ms": base["ttft_p99_ms"],
        "fenlo_ttft_p99_ms": fen["ttft_p99_ms"],
        "ttft_p50_ratio": fen["ttft_p50_ms"] / base["ttft_p50_ms"],
        "ttft_p99_ratio": fen["ttft_p99_ms"] / base["ttft_p99_ms"],
        "added_ttft_p50_ms": one_fen["ttft_p50_ms"] - one_base["ttft_p50_ms"],
        "added_ttft_p50_ms_rag": one_fen_rag["ttft_p50_ms"] - one_base_rag["ttft_p50_ms"],
        # CPU time comes in clock ticks (10 ms): a short run may show none at all.
        "cpu_ms_per_turn_ratio": _ratio(fen["cpu_ms_per_turn"], base["cpu_ms_per_turn"]),
        "ttft_ratio_history_1000_vs_10": median(long) / median(short),
        "history_ttft_p50_ms": {"10": median(short), str(plan.history): median(long)},
        "ttft_ratio_workspaces_1000_vs_1": median(many_ws) / median(one_ws),
        "workspaces_ttft_p50_ms": {"1": median(one_ws), str(plan.workspaces): median(many_ws)},
        "failed_turns": sum(r["failed"] for r in load.values()),
    }
