"""``fenlo bench``: run the harness, print the table (and the JSON line), write the results."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from fenlo_server.bench import harness, report


def _clean(value: Any) -> Any:
    """JSON without NaN (as null), so every reader can parse it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run_bench(args: argparse.Namespace) -> int:
    from fenlo_server.config import Settings
    from fenlo_server.loops import resolve

    # `auto`: whatever `fenlo serve` would run on here, for the baseline too.
    loop = resolve(Settings().event_loop if args.loop == "auto" else args.loop)
    results = harness.run(quick=args.quick, loop=loop, progress=sys.stderr)
    print(report.table(results), flush=True)
    if args.write is not None:
        out: Path = args.write
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(json.dumps(_clean(results), indent=1) + "\n")
        report.plot(results, out / "latest.png")
        print(f"wrote {out / 'latest.json'} and {out / 'latest.png'}", flush=True)
    if args.json:
        print(json.dumps(_clean(report.summary(results))), flush=True)
    return 1 if results["failed_turns"] else 0
