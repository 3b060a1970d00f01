"""The ``fenlo`` command: migrate, workspace/token/apikey create against a real
server, and ``serve --demo`` with its printed ``buf curl`` command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from grpc import aio
from sqlalchemy.engine import make_url

from fenlo.v1 import workspace_pb2
from fenlo_server.app import FenloApp
from tests.conftest import make_settings, start_app
from tests.helpers import Api, bearer, rich_error

BIN = Path(sys.executable).parent
FENLO = BIN / "fenlo"
BUF = BIN / "buf"
ID = re.compile(r"[0-9a-z]{26}")
JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
API_KEY = re.compile(r"fk_[A-Za-z0-9_-]{43}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment without any FENLO_* of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
    env.update(FENLO_DATA_DIR=str(data_dir), FENLO_METRICS_PORT="0", **extra)
    return env


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stdout.splitlines()
        return lines[-1] if lines else ""

    def one_line_error(self) -> str:
        """The error a failed command printed: one line on stderr, no traceback."""
        assert self.code != 0
        assert self.stdout == ""
        assert "Traceback" not in self.stderr
        lines = [line for line in self.stderr.splitlines() if "error" in line or "fenlo:" in line]
        assert len(lines) == 1, self.stderr
        return lines[0]


async def run(env: dict[str, str], cwd: Path, *args: str, within: float = 30) -> Result:
    process = await asyncio.create_subprocess_exec(
        str(FENLO),
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


def default_sqlite(data_dir: Path) -> str:
    """The database the CLI uses when FENLO_DATABASE_URL is unset."""
    return f"sqlite+aiosqlite:///{(data_dir / 'fenlo.db').resolve()}"


def json_stream(text: str) -> list[dict[str, Any]]:
    """The JSON objects ``buf curl`` prints one after another for a stream."""
    decoder = json.JSONDecoder()
    events: list[dict[str, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return events
        event, position = decoder.raw_decode(text, position)
        events.append(event)


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def test_migrate_on_a_fresh_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    env = cli_env(data_dir)
    result = await run(env, tmp_path, "migrate")
    assert result.code == 0, result.stderr
    assert result.last_line == "fenlo: database is up to date"
    assert (data_dir / "fenlo.db").is_file()
    # Idempotent.
    again = await run(env, tmp_path, "migrate")
    assert (again.code, again.last_line) == (0, "fenlo: database is up to date")
    # The schema is current: a server that does not migrate by itself accepts it.
    app = await start_app(make_settings(tmp_path, default_sqlite(data_dir), data_dir=data_dir))
    try:
        async with Api(app) as api:
            workspace_id, token = await api.create_workspace("On migrated schema")
            got = await api.workspaces.GetWorkspace(
                workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
                metadata=api.md(token),
            )
            assert got.display_name == "On migrated schema"
    finally:
        await app.stop(grace=0)


@pytest.fixture
async def operator(database_url: str, tmp_path: Path) -> Any:
    """The CLI's environment and a running server on the same data dir and database.

    Neither sets a JWT secret, so both use the one generated in the data dir.
    """
    data_dir = tmp_path / "data"
    env = cli_env(data_dir, FENLO_DATABASE_URL=database_url)
    app = await start_app(make_settings(tmp_path, database_url, data_dir=data_dir, jwt_secret=None))
    try:
        async with Api(app) as api:
            yield env, api
    finally:
        await app.stop(grace=0)


async def get_workspace(api: Api, workspace_id: str, credential: str) -> workspace_pb2.Workspace:
    return await api.workspaces.GetWorkspace(
        workspace_pb2.GetWorkspaceRequest(name=f"workspaces/{workspace_id}"),
        metadata=bearer(credential),
        timeout=5,
    )


async def rename(api: Api, workspace_id: str, credential: str) -> None:
    await api.workspaces.UpdateWorkspace(
        workspace_pb2.UpdateWorkspaceRequest(
            workspace=workspace_pb2.Workspace(
                name=f"workspaces/{workspace_id}", display_name="Renamed"
            )
        ),
        metadata=bearer(credential),
        timeout=5,
    )


async def test_operator_commands_issue_credentials_the_server_accepts(
    operator: tuple[dict[str, str], Api], tmp_path: Path
) -> None:
    env, api = operator
    assert (tmp_path / "data" / "jwt-hs256.secret").is_file()

    created = await run(env, tmp_path, "workspace", "create", "Acme Bakery")
    assert created.code == 0, created.stderr
    workspace_id = created.last_line
    assert ID.fullmatch(workspace_id), created.stdout
    assert f"workspaces/{workspace_id}" in created.stderr

    # The commands below are independent of each other: run them together.
    (
        default,
        service,
        platform,
        agent_key,
        no_workspace,
        bad_ttl,
        zero_ttl,
        unknown_key,
        long_name,
    ) = await asyncio.gather(
        run(env, tmp_path, "token", "create", "--workspace", workspace_id),
        run(
            env,
            tmp_path,
            "token",
            "create",
            "--workspace",
            workspace_id,
            "--role",
            "service",
            "--ttl",
            "30m",
        ),
        run(env, tmp_path, "token", "create", "--role", "platform_admin"),
        run(env, tmp_path, "apikey", "create", "--workspace", workspace_id, "--role", "agent"),
        run(env, tmp_path, "token", "create"),
        run(env, tmp_path, "token", "create", "--workspace", workspace_id, "--ttl", "soon"),
        run(env, tmp_path, "token", "create", "--workspace", workspace_id, "--ttl", "0"),
        run(env, tmp_path, "apikey", "create", "--workspace", "01nosuchworkspace000000000"),
        run(env, tmp_path, "workspace", "create", "x" * 201),
    )

    # token create: a JWT alone on the last line, admin for 24h by default.
    assert default.code == 0, default.stderr
    token = default.last_line
    assert JWT.fullmatch(token)
    got = claims(token)
    assert (got["ws"], got["roles"], got["exp"] - got["iat"]) == (
        workspace_id,
        ["admin"],
        24 * 3600,
    )
    assert (await get_workspace(api, workspace_id, token)).display_name == "Acme Bakery"
    await rename(api, workspace_id, token)  # admin may

    # --role service --ttl 30m
    assert service.code == 0, service.stderr
    got = claims(service.last_line)
    assert (got["ws"], got["roles"], got["exp"] - got["iat"]) == (workspace_id, ["service"], 1800)
    assert (await get_workspace(api, workspace_id, service.last_line)).name.endswith(workspace_id)
    with pytest.raises(aio.AioRpcError) as caught:
        await rename(api, workspace_id, service.last_line)
    assert rich_error(caught.value).reason == "PERMISSION_DENIED_ROLE"

    # --role platform_admin needs no workspace and reaches every workspace.
    assert platform.code == 0, platform.stderr
    assert JWT.fullmatch(platform.last_line)
    assert "ws" not in claims(platform.last_line)
    listed = await api.workspaces.ListWorkspaces(
        workspace_pb2.ListWorkspacesRequest(), metadata=bearer(platform.last_line), timeout=5
    )
    assert f"workspaces/{workspace_id}" in [w.name for w in listed.workspaces]

    # apikey create: an fk_ key on the last line that authenticates with its role.
    assert agent_key.code == 0, agent_key.stderr
    key = agent_key.last_line
    assert API_KEY.fullmatch(key), agent_key.stdout
    assert f"workspaces/{workspace_id}/apiKeys/" in agent_key.stderr
    assert (await get_workspace(api, workspace_id, key)).display_name == "Renamed"
    with pytest.raises(aio.AioRpcError) as caught:
        await rename(api, workspace_id, key)
    assert rich_error(caught.value).reason == "PERMISSION_DENIED_ROLE"
    keys = await api.workspaces.ListApiKeys(
        workspace_pb2.ListApiKeysRequest(parent=f"workspaces/{workspace_id}"),
        metadata=bearer(token),
        timeout=5,
    )
    assert [(k.prefix, list(k.roles)) for k in keys.api_keys] == [
        (key[:10], [workspace_pb2.ROLE_AGENT])
    ]

    # Mistakes: a nonzero exit and one line that says what is wrong.
    assert no_workspace.code == 1
    assert no_workspace.one_line_error() == (
        "fenlo: --workspace is required unless --role platform_admin"
    )
    assert bad_ttl.code == 2
    assert "invalid duration 'soon'" in bad_ttl.one_line_error()
    assert zero_ttl.code == 2
    assert "the duration must be positive" in zero_ttl.one_line_error()
    assert unknown_key.code == 1
    assert unknown_key.one_line_error() == (
        "fenlo: workspace 01nosuchworkspace000000000 does not exist"
    )
    assert long_name.code == 1
    assert long_name.one_line_error() == "fenlo: the display name must be 1 to 200 characters"


# ---------------------------------------------------------------- serve --demo


@dataclass
class Demo:
    workspace_id: str
    token: str
    command: str


async def serve_demo(tmp_path: Path, data_dir: Path) -> Demo:
    """Run ``fenlo serve --demo``, read what it prints, check it, then stop it."""
    port = free_port()
    env = cli_env(data_dir, FENLO_HOST="127.0.0.1", FENLO_PORT=str(port))
    out_file = tmp_path / f"demo-{port}.out"
    err_file = tmp_path / f"demo-{port}.err"
    with out_file.open("wb") as out, err_file.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            str(FENLO), "serve", "--demo", env=env, cwd=tmp_path, stdout=out, stderr=err
        )
    try:
        deadline = time.monotonic() + 20
        while "buf curl" not in out_file.read_text():
            assert process.returncode is None, err_file.read_text()
            assert time.monotonic() < deadline, err_file.read_text()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.1)  # the rest of the block is printed in the same write
        printed = out_file.read_text()
        assert f"fenlo: listening on 127.0.0.1:{port} (event loop: uvloop)" in printed
        [workspace_id] = re.findall(r"Demo workspace: workspaces/([0-9a-z]{26})", printed)
        [token] = re.findall(r"export FENLO_TOKEN=(\S+)", printed)
        [command, chat_command] = [
            line.strip() for line in printed.splitlines() if "buf curl" in line
        ]
        assert f"authorization: Bearer {token}" in command
        assert " -d " in command
        assert f"http://127.0.0.1:{port}/fenlo.v1.WorkspaceService/GetWorkspace" in command

        # The printed command works as printed (with the venv's buf).
        assert command.startswith(".venv/bin/buf ")
        argv = shlex.split(command.replace(".venv/bin/buf", str(BUF), 1))
        assert argv[argv.index("-d") + 1] == json.dumps({"name": f"workspaces/{workspace_id}"})
        buf_env = dict(env, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        curl = await asyncio.create_subprocess_exec(
            *argv,
            env=buf_env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(curl.communicate(), 30)
        finally:
            if curl.returncode is None:
                curl.kill()
                await curl.wait()
        assert curl.returncode == 0, err.decode()
        answer = json.loads(out)
        assert answer["name"] == f"workspaces/{workspace_id}"
        assert answer["displayName"] == "Demo workspace"
        assert answer["settings"]["assistantName"] == "Harbour Café assistant"

        # The printed two-turn chat works as printed too, in a shell that has
        # the token exported, and shows tokens, sentences, citations, the
        # analysis and the step timings.
        chat = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            chat_command.replace(".venv/bin/buf", str(BUF), 1),
            env=dict(buf_env, FENLO_TOKEN=token),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(chat.communicate(), 60)
        finally:
            if chat.returncode is None:
                chat.kill()
                await chat.wait()
        assert chat.returncode == 0, err.decode()
        events = json_stream(out.decode())
        kinds = [next(iter(event)) for event in events]
        assert kinds[0] == "sessionStarted"
        assert kinds.count("turnCompleted") == 2
        assert {"delta", "sentence", "citations", "annotations"} <= set(kinds)
        timings = [
            event["turnCompleted"]["stepTimings"] for event in events if "turnCompleted" in event
        ]
        assert all(len(turn) == 12 for turn in timings)

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0, err_file.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "Traceback" not in err_file.read_text()
    return Demo(workspace_id, token, command)


async def test_serve_demo_prints_a_working_buf_curl_and_reuses_its_workspace(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = await serve_demo(tmp_path, data_dir)
    second = await serve_demo(tmp_path, data_dir)
    assert second.workspace_id == first.workspace_id
    assert second.token != first.token

    # The demo token is an admin token of that workspace for 24 hours, and the
    # data dir holds exactly one demo workspace.
    got = claims(first.token)
    assert (got["ws"], got["roles"], got["exp"] - got["iat"]) == (
        first.workspace_id,
        ["admin"],
        24 * 3600,
    )
    settings = make_settings(tmp_path, default_sqlite(data_dir), data_dir=data_dir, jwt_secret=None)
    app: FenloApp = await start_app(settings)
    try:
        async with Api(app) as api:
            listed = await api.workspaces.ListWorkspaces(
                workspace_pb2.ListWorkspacesRequest(), metadata=api.md(api.platform_token)
            )
            assert [w.name for w in listed.workspaces] == [f"workspaces/{first.workspace_id}"]
            got_ws = await get_workspace(api, first.workspace_id, second.token)
            assert got_ws.display_name == "Demo workspace"
    finally:
        await app.stop(grace=0)


async def test_operator_mistakes_are_one_line_errors(
    tmp_path: Path, postgres_url: str | None
) -> None:
    env = cli_env(tmp_path / "data")
    mistakes = {
        "role": run(env, tmp_path, "token", "create", "--role", "owner"),
        "port": run(dict(env, FENLO_PORT="99999"), tmp_path, "serve"),
        "log_format": run(dict(env, FENLO_LOG_FORMAT="xml"), tmp_path, "migrate"),
        "dialect": run(
            dict(env, FENLO_DATABASE_URL="nosuchdialect://x"), tmp_path, "workspace", "create", "X"
        ),
    }
    if postgres_url is not None:
        missing = make_url(postgres_url).set(database="fenlo_no_such_database")
        url = missing.render_as_string(hide_password=False)
        mistakes["database"] = run(
            dict(env, FENLO_DATABASE_URL=url), tmp_path, "workspace", "create", "X"
        )
    results = dict(zip(mistakes, await asyncio.gather(*mistakes.values()), strict=True))

    assert results["role"].code == 2
    assert "invalid choice: 'owner'" in results["role"].one_line_error()
    assert results["port"].code == 1
    assert results["port"].one_line_error().startswith("fenlo: invalid configuration: FENLO_PORT: ")
    assert results["log_format"].code == 1
    assert (
        results["log_format"]
        .one_line_error()
        .startswith("fenlo: invalid configuration: FENLO_LOG_FORMAT: ")
    )
    assert results["dialect"].code == 1
    assert results["dialect"].one_line_error().startswith("fenlo: database error: ")
    assert "nosuchdialect" in results["dialect"].one_line_error()
    if "database" in results:
        assert results["database"].code == 1
        assert results["database"].one_line_error() == (
            'fenlo: database error: database "fenlo_no_such_database" does not exist'
        )
