"""Evaluate Fenlo's prompt guard on a labelled set of attacks and hard benign messages.

    python bench/guard_eval/run.py            # prints the tables
    python bench/guard_eval/run.py --write    # also writes bench/results/guard_eval.json
    python bench/guard_eval/run.py --cases new.jsonl --no-validate   # another batch

Two guards are measured: the rules alone (``guard.check``) and the rules plus
the semantic layer (``guard_semantic``: a classifier on the message's
multilingual embedding, trained by ``train.py``), which is what the
``prompt_guard`` step runs when the workspace retrieves (the default).

``cases.jsonl`` holds one case a line: ``{"id", "text", "label": "attack" |
"benign", "category" (attacks: injection | jailbreak | exfiltration | content),
"language": en | es | fr | de | pt, "hard" (benign: uses trigger words
innocently), "policy" (optional: the guard step's params for that workspace),
"split": "dev" | "test", "note"}``.

How the cases came about, so the numbers can be read for what they are:

1. The first 272 (ids with no letter, ``atk-001``, ``ben-001``) were written
   before any rule existed, by the author of the rules. Their split was drawn
   from a hash of the id (sha256 % 10 < 3 -> ``test``, 88 of them), not chosen.
   The rules were tuned on the ``dev`` misclassifications (two, both bugs) and
   on about 170 probe messages that are not in this set.
2. That ``test`` split was then run once, rules frozen: detection 49/50
   (98.0%), false positives 1/38 (2.6%). Its two errors (a three-letter word
   spelt out, "a l l"; one phrase counted by two weak rules) were fixed.
3. ``v`` ids (``atk-v01``, 73 cases, split ``test``) were written after that
   freeze. First run: detection 23/33 (69.7%), false positives 0/40 (hard
   0/33). The rules were then improved on their misses.
4. ``w`` ids (``atk-w01``, 64 cases, split ``test``) were written after the
   second freeze. First run: detection 17/30 (56.7%), false positives 0/34
   (hard 0/30). The rules were then improved on their misses.

5. ``x`` ids (``atk-x01``, 130 cases, split ``test``) were written by a helper
   that never saw the rules or the set. First run, rules frozen: detection
   28/65 (43.1%), false positives 0/65. The semantic layer was then trained
   (on steps 1-4 and its own prototypes; 5-fold cross-validation on its own:
   84.7% detection, 0/211 false positives) and frozen, and run once on ``x``:
   rules plus semantic layer 54/65 (83.1%), false positives 0/65 (hard 0/58).
   The layer was then retrained with ``x``. (Caveat: three of the layer's
   prototypes paraphrase examples given in the brief of the helper who wrote
   ``x``, so 83.1% is a little optimistic.)
6. ``y`` ids (``atk-y01``, 130 cases, split ``test``), written blind by another
   helper, were run once on the frozen guard: rules alone 32/65 (49.2%), rules
   plus semantic layer 56/65 (86.2%); false positives 0/65 and 2/65 (3.1%,
   both "verification token" messages). The layer was then retrained with
   ``y``, with more benign examples (short and angry messages, customers giving
   their own details, the intent set's ``train`` split) and with personal data
   masked before it reads a message.

So every case here has now been tuned or trained on, and today's numbers are
optimistic. The first runs are the honest estimate for new messages: the rules
alone catch about 43-70% of attacks phrased in ways they have not seen, the
rules with the semantic layer about 83-86%, with 0-3% false positives.

Reported: detection rate (attacks blocked / attacks), false-positive rate
(benign blocked / benign), the false-positive rate on hard benign messages,
all per split, per attack category and per language; the misclassified
cases; and the latency of one ``check()`` call (p50, p99) over all messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "server"))

from fenlo_server.pipeline.analysis.guard import GuardPolicy, check  # noqa: E402
from fenlo_server.pipeline.analysis.guard_semantic import SemanticGuard  # noqa: E402
from fenlo_server.pipeline.analysis.types import GuardResult  # noqa: E402

CASES = Path(__file__).resolve().parent / "cases.jsonl"
RESULTS = ROOT / "bench" / "results" / "guard_eval.json"
LABELS = ("attack", "benign")
CATEGORIES = ("injection", "jailbreak", "exfiltration", "content")
LANGUAGES = ("en", "es", "fr", "de", "pt")
SPLITS = ("dev", "test")
TIMING_REPEATS = 20


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    label: str
    category: str | None
    language: str
    hard: bool
    policy: dict[str, Any]
    split: str
    note: str

    @property
    def is_attack(self) -> bool:
        return self.label == "attack"


@dataclass(frozen=True)
class Outcome:
    case: Case
    result: GuardResult

    @property
    def correct(self) -> bool:
        return self.result.blocked == self.case.is_attack


def load_cases(path: Path = CASES) -> list[Case]:
    cases = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            cases.append(
                Case(
                    id=row["id"],
                    text=row["text"],
                    label=row["label"],
                    category=row.get("category"),
                    language=row["language"],
                    hard=bool(row.get("hard", False)),
                    policy=dict(row.get("policy", {})),
                    split=row["split"],
                    note=row.get("note", ""),
                )
            )
    return cases


def validate(cases: Sequence[Case]) -> list[str]:
    """Problems with the labelled set; empty when it is well formed."""
    problems = []
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        problems.append("duplicate ids")
    for c in cases:
        if c.label not in LABELS:
            problems.append(f"{c.id}: label {c.label!r}")
        if c.is_attack and c.category not in CATEGORIES:
            problems.append(f"{c.id}: category {c.category!r}")
        if not c.is_attack and c.category is not None:
            problems.append(f"{c.id}: a benign case has a category")
        if c.language not in LANGUAGES:
            problems.append(f"{c.id}: language {c.language!r}")
        if c.split not in SPLITS:
            problems.append(f"{c.id}: split {c.split!r}")
        if not c.text.strip():
            problems.append(f"{c.id}: empty text")
        try:
            GuardPolicy.from_params(c.policy)
        except ValueError as error:
            problems.append(f"{c.id}: policy: {error}")
    benign = [c for c in cases if not c.is_attack]
    if len(cases) < 160:
        problems.append(f"only {len(cases)} cases (at least 160)")
    if len(benign) * 2 < len(cases):
        problems.append("fewer than half of the cases are benign")
    if sum(c.hard for c in benign) < 0.6 * len(benign):
        problems.append("fewer than 60% of the benign cases are hard")
    return problems


def run_cases(cases: Iterable[Case]) -> list[Outcome]:
    """The rules alone."""
    return [Outcome(c, check(c.text, GuardPolicy.from_params(c.policy))) for c in cases]


async def run_with_semantic(cases: Iterable[Case], layer: SemanticGuard) -> list[Outcome]:
    """The rules, then the semantic layer for what they allow (as the step does)."""
    outcomes = []
    for case in cases:
        result = check(case.text, GuardPolicy.from_params(case.policy))
        if not result.blocked:
            verdict = await layer.judge(case.text)
            if verdict.attack:
                result = GuardResult(
                    True, verdict.category, verdict.probability, ("semantic layer",)
                )
        outcomes.append(Outcome(case, result))
    return outcomes


def semantic_layer() -> SemanticGuard:
    from fenlo_server.knowledge.embedders import UseMultilingualEmbedder

    return SemanticGuard(UseMultilingualEmbedder())


def rates(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    attacks = [o for o in outcomes if o.case.is_attack]
    benign = [o for o in outcomes if not o.case.is_attack]
    hard = [o for o in benign if o.case.hard]
    detected = sum(o.result.blocked for o in attacks)
    false_positives = sum(o.result.blocked for o in benign)
    hard_fp = sum(o.result.blocked for o in hard)
    return {
        "attacks": len(attacks),
        "detected": detected,
        "detection_rate": _ratio(detected, len(attacks)),
        "benign": len(benign),
        "false_positives": false_positives,
        "false_positive_rate": _ratio(false_positives, len(benign)),
        "hard_benign": len(hard),
        "hard_false_positives": hard_fp,
        "hard_false_positive_rate": _ratio(hard_fp, len(hard)),
    }


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def report(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    splits = {"all": list(outcomes)} | {
        s: [o for o in outcomes if o.case.split == s] for s in SPLITS
    }
    result: dict[str, Any] = {}
    for name, group in splits.items():
        result[name] = {
            "overall": rates(group),
            "by_category": {
                category: rates(
                    [o for o in group if o.case.category == category or not o.case.is_attack]
                )
                for category in CATEGORIES
            },
            "by_language": {
                language: rates([o for o in group if o.case.language == language])
                for language in LANGUAGES
            },
        }
    result["misclassified"] = [
        {
            "id": o.case.id,
            "split": o.case.split,
            "label": o.case.label,
            "category": o.case.category,
            "language": o.case.language,
            "blocked_as": o.result.category,
            "score": o.result.score,
            "reasons": list(o.result.reasons),
            "text": o.case.text,
        }
        for o in outcomes
        if not o.correct
    ]
    return result


def latency(cases: Sequence[Case], repeats: int = TIMING_REPEATS) -> dict[str, float]:
    """check() time per message. Each message is checked `repeats` times (after a
    warm-up); "per message" takes each message's median and then the percentiles
    across messages, which a busy machine disturbs less than the raw calls. CPU time
    (this thread's) leaves out the time the process waited for a core."""
    policies = [GuardPolicy.from_params(c.policy) for c in cases]
    for case, policy in zip(cases, policies, strict=True):
        check(case.text, policy)
    per_message: list[list[float]] = [[] for _ in cases]
    cpu: list[float] = []
    for _ in range(repeats):
        for times, case, policy in zip(per_message, cases, policies, strict=True):
            started, started_cpu = time.perf_counter(), time.thread_time()
            check(case.text, policy)
            cpu.append(time.thread_time() - started_cpu)
            times.append(time.perf_counter() - started)
    medians = sorted(statistics.median(times) for times in per_message)
    calls = sorted(t for times in per_message for t in times)
    cpu.sort()
    lengths = [len(c.text) for c in cases]
    return {
        "messages": len(cases),
        "calls": len(calls),
        "per_message_p50_ms": _percentile(medians, 0.5) * 1000,
        "per_message_p99_ms": _percentile(medians, 0.99) * 1000,
        "per_message_max_ms": medians[-1] * 1000,
        "per_call_p50_ms": _percentile(calls, 0.5) * 1000,
        "per_call_p99_ms": _percentile(calls, 0.99) * 1000,
        "per_call_cpu_p50_ms": _percentile(cpu, 0.5) * 1000,
        "per_call_cpu_p99_ms": _percentile(cpu, 0.99) * 1000,
        "mean_chars": statistics.fmean(lengths),
        "max_chars": max(lengths),
    }


def _percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['detected']}/{r['attacks']} | {_pct(r['detection_rate'])} | "
        f"{r['false_positives']}/{r['benign']} | {_pct(r['false_positive_rate'])} | "
        f"{r['hard_false_positives']}/{r['hard_benign']} | "
        f"{_pct(r['hard_false_positive_rate'])} |"
    )


HEADER = (
    "| {} | detected | detection | benign blocked | FP rate | hard benign blocked | hard FP |\n"
    "|---|---|---|---|---|---|---|"
)


def print_report(result: dict[str, Any], timing: dict[str, float] | None) -> None:
    print(HEADER.format("split"))
    for name in ("all", *SPLITS):
        print(_row(name, result[name]["overall"]))
    for name in ("all", *SPLITS):
        print(f"\n## {name}: attacks by category (benign columns: all benign of the split)\n")
        print(HEADER.format("category"))
        for category, r in result[name]["by_category"].items():
            print(_row(category, r))
        print(f"\n## {name}: by language\n")
        print(HEADER.format("language"))
        for language, r in result[name]["by_language"].items():
            print(_row(language, r))
    print("\n## misclassified\n")
    if not result["misclassified"]:
        print("none")
    for m in result["misclassified"]:
        kind = "missed attack" if m["label"] == "attack" else "false positive"
        print(
            f"- {m['id']} ({m['split']}, {m['language']}) {kind}: score {m['score']:.2f} "
            f"{m['reasons']}\n    {m['text'][:160]!r}"
        )
    if timing is None:
        return
    print(
        f"\n## latency of check()\n\n{timing['messages']} messages of "
        f"{timing['mean_chars']:.0f} characters on average (longest {timing['max_chars']:.0f}), "
        f"{timing['calls']} calls.\nper message (median of its calls): "
        f"p50 {timing['per_message_p50_ms']:.3f} ms, p99 {timing['per_message_p99_ms']:.3f} ms, "
        f"max {timing['per_message_max_ms']:.3f} ms\nper call, wall clock: "
        f"p50 {timing['per_call_p50_ms']:.3f} ms, p99 {timing['per_call_p99_ms']:.3f} ms\n"
        f"per call, CPU time: p50 {timing['per_call_cpu_p50_ms']:.3f} ms, "
        f"p99 {timing['per_call_cpu_p99_ms']:.3f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help=f"also write {RESULTS}")
    parser.add_argument("--cases", type=Path, default=CASES, help="a JSONL file of cases")
    parser.add_argument(
        "--no-validate", action="store_true", help="skip the size and balance checks"
    )
    args = parser.parse_args()
    cases = load_cases(args.cases)
    problems = [] if args.no_validate else validate(cases)
    if problems:
        print("the labelled set is not valid:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    print("# the rules alone\n")
    result = report(run_cases(cases))
    timing = latency(cases)
    print_report(result, timing)
    print("\n# the rules and the semantic layer\n")
    combined = report(asyncio.run(run_with_semantic(cases, semantic_layer())))
    print_report(combined, None)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "cases": len(cases),
            "latency": timing,
            **result,
            "with_semantic_layer": combined,
        }
        RESULTS.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
