"""`fenlo kb add` and `fenlo kb search` against a running server."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from fenlo_server.app import FenloApp
from tests.helpers import Api

FENLO = str(Path(sys.executable).with_name("fenlo"))
DOCS = Path(__file__).resolve().parents[2] / "bench" / "kb_eval" / "docs"


async def fenlo(
    *args: str, token: str | None, env_token: str | None = None
) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
    if env_token:
        env["FENLO_TOKEN"] = env_token
    argv = [FENLO, *args] + (["--token", token] if token else [])
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_kb_add_waits_for_each_document_and_search_finds_them(
    sqlite_api: Api, sqlite_app: FenloApp, tmp_path: Path
) -> None:
    workspace, token = await sqlite_api.create_workspace("CLI KB")
    target = ["--target", f"127.0.0.1:{sqlite_app.port}", "--workspace", workspace]
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\nnot really")
    files = [str(DOCS / "policies.pdf"), str(DOCS / "faq.txt"), str(broken)]
    code, out, err = await fenlo("kb", "add", *files, *target, token=token)
    assert code == 1, err  # one file failed
    lines = out.strip().splitlines()
    assert lines[0].startswith("policies.pdf: READY (") and "passages)" in lines[0]
    assert lines[1].startswith("faq.txt: READY (")
    assert lines[2].startswith("broken.pdf: FAILED (")
    assert "Traceback" not in err

    code, out, err = await fenlo(
        "kb", "search", "How late can I cancel?", *target, token=None, env_token=token
    )
    assert code == 0, err
    assert out.startswith("1. [")
    assert "policies.pdf" in out.splitlines()[0]

    code, out, err = await fenlo(
        "kb", "search", "cancel", "--json", "--limit", "2", *target, token=token
    )
    assert code == 0, err
    results = json.loads(out)["results"]
    assert len(results) == 2
    assert {"passage", "document", "title", "score"} <= set(results[0])

    code, out, err = await fenlo(
        "kb", "add", str(DOCS / "faq.txt"), "--no-wait", "--json", *target, token=token
    )
    assert code == 0, err
    assert json.loads(out)["documents"][0]["status"] in {
        "DOCUMENT_STATUS_PENDING",
        "DOCUMENT_STATUS_PROCESSING",
        "DOCUMENT_STATUS_READY",
    }


async def test_kb_errors_print_one_line(sqlite_api: Api, sqlite_app: FenloApp) -> None:
    other, _ = await sqlite_api.create_workspace("Other")
    _, token = await sqlite_api.create_workspace("Mine")
    target = ["--target", f"127.0.0.1:{sqlite_app.port}", "--workspace", other]
    code, out, err = await fenlo("kb", "search", "x", *target, token=token)
    assert (code, out) == (1, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fenlo: PERMISSION_DENIED PERMISSION_DENIED_WORKSPACE:")
    code, _out, err = await fenlo("kb", "search", "x", *target, token=None)
    assert (code, err.strip()) == (1, "fenlo: no token: pass --token or set FENLO_TOKEN")
    code, _out, err = await fenlo("kb", "add", "/nonexistent.txt", *target, token=token)
    assert (code, err.strip()) == (1, "fenlo: no such file: /nonexistent.txt")


async def test_worker_needs_redis() -> None:
    code, _out, err = await fenlo("worker", token=None)
    assert code == 1
    assert err.strip().startswith("fenlo: fenlo worker needs FENLO_REDIS_URL")
