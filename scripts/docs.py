"""Keep the reference tables in docs/ equal to the code they describe.

    python scripts/docs.py          rewrite the generated blocks
    python scripts/docs.py --check  fail when a block is stale

A generated block sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from fenlo_server.auth.permissions import table_markdown
from fenlo_server.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings_table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default is None else f"`{default}`"
        names = f"`FENLO_{name.upper()}`"
        alias = field.validation_alias
        if alias is not None:
            choices = getattr(alias, "choices", [alias])
            names = ", ".join(f"`{choice}`" for choice in choices)
        lines.append(f"| {names} | {shown} | {field.description} |")
    return "\n".join(lines)


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "permissions": ("docs/authentication.md", table_markdown),
    "settings": ("docs/configuration.md", settings_table),
}


def render(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"no generated block {name!r} found")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for name, (relative, make) in BLOCKS.items():
        path = ROOT / relative
        text = path.read_text()
        updated = render(text, name, make())
        if updated != text:
            stale.append(relative)
            if not args.check:
                path.write_text(updated)
    if args.check and stale:
        print("stale generated docs; run `make docs`:", *stale, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
