"""Generate the Python code for the Fenlo contract into clients/python/fenlo/v1.

    python scripts/generate.py             regenerate
    python scripts/generate.py --if-stale  regenerate only when protos/ changed
    python scripts/generate.py --check     fail when the committed code is stale

The generated modules import as ``fenlo.v1.<name>_pb2``; type stubs come from
mypy-protobuf. A hash of the inputs is kept beside the code so ``--if-stale``
needs no timestamps (a fresh clone gives every file the same mtime).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
OUT_ROOT = ROOT / "clients" / "python"
PACKAGE = Path("fenlo") / "v1"
HASH_FILE = ".generated-from"
BIN = Path(sys.executable).parent
INIT = '"""Generated from protos/fenlo/v1 by `make generate`. Do not edit."""\n'


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def inputs_hash() -> str:
    digest = hashlib.sha256()
    for path in proto_files():
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def generate(out_root: Path) -> None:
    out_dir = out_root / PACKAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*_pb2*"):
        old.unlink()
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{THIRD_PARTY}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    result = subprocess.run(args, cwd=PROTO_ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"protoc failed with exit code {result.returncode}")
    (out_dir / "__init__.py").write_text(INIT)
    (out_dir / "py.typed").write_text("")
    (out_dir / HASH_FILE).write_text(inputs_hash() + "\n")


def generated_files(root: Path) -> set[str]:
    out_dir = root / PACKAGE
    return {p.name for p in out_dir.iterdir() if p.is_file() and p.suffix != ".pyc"}


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        expected = generated_files(fresh)
        actual = generated_files(OUT_ROOT)
        stale = sorted(expected ^ actual)
        for name in sorted(expected & actual):
            if not filecmp.cmp(fresh / PACKAGE / name, OUT_ROOT / PACKAGE / name, shallow=False):
                stale.append(name)
        if stale:
            print("generated code is stale; run `make generate` and commit:", *stale, sep="\n  ")
            return 1
    print("generated code is up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--if-stale", action="store_true")
    args = parser.parse_args()
    if args.check:
        return check()
    if args.if_stale:
        hash_path = OUT_ROOT / PACKAGE / HASH_FILE
        if hash_path.exists() and hash_path.read_text().strip() == inputs_hash():
            return 0
        print("protos changed: regenerating clients/python/fenlo/v1")
    generate(OUT_ROOT)
    shutil.rmtree(OUT_ROOT / PACKAGE / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
