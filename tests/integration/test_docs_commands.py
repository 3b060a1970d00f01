"""The docs' commands, run as written: every ``sh`` block of docs/quickstart.md and
docs/api-tour.md, in order, in one shell, against ``fenlo serve --demo`` (what
``make run`` starts)."""

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
        script = "\n".join(
            sh_blocks(ROOT / "docs" / "quickstart.md") + sh_blocks(ROOT / "docs" / "api-tour.md")
        )
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
        tour = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
            cwd=ROOT,
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
    finally:
        if server.returncode is None:
            server.terminate()
            await asyncio.wait_for(server.wait(), 30)
