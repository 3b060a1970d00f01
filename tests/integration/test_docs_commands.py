"""The docs' commands, run as written: every ``sh`` block of the quickstart, the
API tour and the leads, events and data-lifecycle pages, in order, in one shell,
against ``fenlo serve --demo`` (what ``make run`` starts). (The other pages'
commands need a placeholder filled in or a service this machine does not have:
a public webhook URL, Groq, Ollama.)"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENLO = str(Path(sys.executable).with_name("fenlo"))
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sh_blocks(doc: Path) -> list[str]:
    return BLOCK.findall(doc.read_text())


async def test_the_quickstart_and_the_api_tour_run_as_written(tmp_path: Path) -> None:
    port, receiver = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
    env.update(
        FENLO_PORT=str(port),
        FENLO_METRICS_PORT="0",
        FENLO_LOG_LEVEL="WARNING",
        FENLO_WEBHOOK_ALLOW_PRIVATE="true",
    )
    out_file = tmp_path / "serve.out"
    with out_file.open("wb") as out, (tmp_path / "serve.err").open("wb") as err:
        server = await asyncio.create_subprocess_exec(
            FENLO, "serve", "--demo", env=env, cwd=tmp_path, stdout=out, stderr=err
        )
    try:
        deadline = time.monotonic() + 60
        while "buf curl" not in out_file.read_text():
            assert server.returncode is None, (tmp_path / "serve.err").read_text()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
        printed = out_file.read_text()
        [token] = re.findall(r"export FENLO_TOKEN=(\S+)", printed)
        [workspace] = re.findall(r"Demo workspace: (workspaces/[0-9a-z]{26})", printed)
        # In this order: the data-lifecycle page ends by deleting the workspace.
        docs = ["quickstart", "api-tour", "leads-analytics", "events", "data-lifecycle"]
        blocks = [block for doc in docs for block in sh_blocks(ROOT / "docs" / f"{doc}.md")]
        # A live stream runs until the reader stops it; here, after three seconds.
        blocks = [
            b.replace(".venv/bin/buf curl", "timeout 3 .venv/bin/buf curl", 1).rstrip()
            + " || test $? = 124\n"
            if b.rstrip().endswith("StreamEvents")
            else b
            for b in blocks
        ]
        script = "shopt -s expand_aliases\n" + "\n".join(blocks)
        script = script.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
        script = script.replace("8787", str(receiver))
        # The CLI's commands name no --target: the reader's server is on the default
        # address, this test's on FENLO_TARGET.
        shell_env = {
            **env,
            "FENLO_TOKEN": token,
            "WS": workspace,
            "FENLO_TARGET": f"127.0.0.1:{port}",
        }
        # The demo guide is indexed in the background: wait, as a reader would.
        for _ in range(200):
            probe = await asyncio.create_subprocess_exec(
                FENLO,
                "kb",
                "search",
                "dogs",
                "--target",
                f"127.0.0.1:{port}",
                "--workspace",
                workspace.split("/")[1],
                "--token",
                token,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            found, _ = await probe.communicate()
            if b"Dogs" in found:
                break
            await asyncio.sleep(0.1)
        scratch = tmp_path / "reader"
        scratch.mkdir()
        (scratch / ".venv").symlink_to(ROOT / ".venv")
        (scratch / "examples").symlink_to(ROOT / "examples")
        tour = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
            cwd=scratch,
            env=shell_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(tour.communicate(), 180)
        text, errors = stdout.decode(), stderr.decode()
        assert tour.returncode == 0, f"{text}\n--- stderr\n{errors}"
        # The quickstart: two chats (the second from the uploaded document), the lists.
        assert text.count("assistant> ") == 3 and "Sunday" in text
        assert "car park behind the cafe" in text and "/leads/" in text
        assert '"status": "SERVING"' in text
        assert "Harbour Café assistant" in text
        assert "LEAD_STATUS_CONTACTED" in text
        assert "DELIVERY_STATE_SUCCEEDED" in text
        assert "refused, as it should be" in text and "permission_denied" in errors
        # The data-lifecycle page: retention set, an erasure, an export, the deletion.
        assert '"retentionDays": 90' in text and (scratch / "export.jsonl").exists()
    finally:
        if server.returncode is None:
            server.terminate()
            await asyncio.wait_for(server.wait(), 30)
