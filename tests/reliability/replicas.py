"""Several ``fenlo serve`` processes behind nginx ``grpc_pass``, sharing one
PostgreSQL database and one Redis, for the replica scenarios of the reliability
suite.

nginx comes from Debian's ``nginx-light`` (``scripts/ensure-nginx`` installs it;
``make reliability`` runs that first). Its configuration is the one
docs/operations.md shows, plus ``add_header x-fenlo-upstream $upstream_addr`` so
a client learns which replica took its call (the replicas are otherwise
indistinguishable), and HTTP/2 limits raised for hundreds of streams on one
connection (nginx's default of 128 concurrent streams would queue the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio

from fenlo.v1 import workspace_pb2, workspace_pb2_grpc
from fenlo_server.app import build_token_service
from fenlo_server.config import Settings
from tests.helpers import bearer
from tests.integration.test_shutdown import FENLO, free_port
from tests.redis_helpers import PrivateRedis, private_redis

UPSTREAM_HEADER = "x-fenlo-upstream"
SECRET = "replicas-test-secret-0123456789abcdef"
PAGE_SECRET = "replicas-page-token-secret-0123456789"
WEBHOOK_KEY = "replicas-webhook-key-0123456789abcdef"

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    http2_max_concurrent_streams 1024;
    keepalive_requests 1000000;
    upstream fenlo {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://fenlo;
            grpc_read_timeout 1h;
            grpc_send_timeout 1h;
            add_header {header} $upstream_addr always;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    assert found, (
        "nginx is not installed: `make reliability` installs Debian's nginx-light "
        "(scripts/ensure-nginx)"
    )
    return found


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class Nginx:
    """nginx in the foreground with a prefix of its own, balancing ``backends``."""

    def __init__(self, directory: Path, backends: list[int]) -> None:
        self.directory = directory
        self.backends = backends
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    def config(self) -> str:
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in self.backends)
        user = "user root;" if os.geteuid() == 0 else ""
        return NGINX_CONF.format(
            prefix=self.directory,
            user=user,
            servers=servers,
            port=self.port,
            header=UPSTREAM_HEADER,
        )

    async def start(self, within: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config())
        log = (self.directory / "nginx.out").open("wb")
        self.process = await asyncio.create_subprocess_exec(
            nginx_binary(),
            "-p",
            str(self.directory),
            "-c",
            str(conf),
            "-e",
            str(self.directory / "error.log"),
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + within
        while not await port_open(self.port):
            if self.process.returncode is not None or time.monotonic() > deadline:
                errors = (self.directory / "error.log").read_text(errors="replace")
                raise AssertionError(f"nginx did not start: {errors[-2000:]}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)  # fast shutdown
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


class Replica:
    """One ``fenlo serve`` on the shared database and Redis."""

    def __init__(self, directory: Path, index: int, env: Mapping[str, str]) -> None:
        self.index = index
        self.directory = directory
        self.port = free_port()
        self.stdout = directory / "serve.out"
        self.stderr = directory / "serve.err"
        self.env = {**env, "FENLO_PORT": str(self.port), "FENLO_DATA_DIR": str(directory / "data")}
        self.process: asyncio.subprocess.Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, within: float = 90.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.stdout.open("ab") as out, self.stderr.open("ab") as err:
            self.process = await asyncio.create_subprocess_exec(
                str(FENLO), "serve", env=self.env, cwd=self.directory, stdout=out, stderr=err
            )
        expected = f"fenlo: listening on {self.address}"
        deadline = time.monotonic() + within
        while expected not in self.stdout.read_text():
            if self.process.returncode is not None:
                raise AssertionError(f"replica {self.index} exited:\n{self.stderr.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"replica {self.index} did not start")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""


@dataclass
class Cluster:
    replicas: list[Replica]
    nginx: Nginx
    redis: PrivateRedis
    database_url: str
    channel: aio.Channel  # through nginx
    direct: list[aio.Channel] = field(default_factory=list)  # to each replica

    def token(self, workspace_id: str | None, role: str) -> str:
        settings = Settings(data_dir=self.replicas[0].directory / "data", jwt_secret=SECRET)
        return build_token_service(settings).issue(
            subject="replicas-test", workspace_id=workspace_id, roles=[role], ttl_seconds=3600
        )

    def replica_of(self, upstream: str) -> int:
        """The index of the replica at ``upstream`` (nginx's ``$upstream_addr``)."""
        for replica in self.replicas:
            if upstream.endswith(f":{replica.port}"):
                return replica.index
        raise AssertionError(f"no replica at {upstream!r}")

    async def create_workspace(self, name: str, **quotas: int) -> str:
        created = await workspace_pb2_grpc.WorkspaceServiceStub(self.channel).CreateWorkspace(
            workspace_pb2.CreateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(
                    display_name=name, quotas=workspace_pb2.WorkspaceQuotas(**quotas)
                )
            ),
            metadata=bearer(self.token(None, "platform_admin")),
            timeout=20,
        )
        return str(created.name.split("/")[1])


def upstream_of(metadata: Any) -> str:
    """The replica address nginx put into a call's initial or trailing metadata."""
    found = [str(value) for key, value in metadata or () if key == UPSTREAM_HEADER]
    return found[0] if found else ""


def replica_env(database_url: str, redis_url: str, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FENLO_")}
    env.update(
        FENLO_HOST="127.0.0.1",
        FENLO_METRICS_PORT="0",
        FENLO_DATABASE_URL=database_url,
        FENLO_REDIS_URL=redis_url,
        FENLO_JWT_SECRET=SECRET,
        FENLO_PAGE_TOKEN_SECRET=PAGE_SECRET,
        FENLO_WEBHOOK_SECRET_KEY=WEBHOOK_KEY,
        FENLO_LOG_FORMAT="json",
        FENLO_LOG_LEVEL="WARNING",
        FENLO_SHUTDOWN_GRACE_SECONDS="2",
        FENLO_LLM_ORDER="offline",
        FENLO_DEFAULT_REQUESTS_PER_MINUTE="100000000",
        FENLO_DEFAULT_CONCURRENT_CHAT_STREAMS="100000",
        FENLO_DEFAULT_TURNS_PER_MINUTE="100000000",
        FENLO_DEFAULT_TOKENS_PER_DAY="1000000000000",
    )
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, database_url: str, *, count: int = 3, env: Mapping[str, str] | None = None
) -> AsyncIterator[Cluster]:
    """``count`` replicas on ``database_url`` and a private Redis, nginx in front;
    everything is stopped at the end, whatever happened."""
    async with private_redis(tmp_path / f"redis-{uuid.uuid4().hex[:6]}") as redis:
        shared = replica_env(database_url, redis.url, env or {})
        replicas = [Replica(tmp_path / f"replica{i}", i, shared) for i in range(count)]
        nginx = Nginx(tmp_path / "nginx", [r.port for r in replicas])
        channels: list[aio.Channel] = []
        try:
            await asyncio.gather(*(r.start() for r in replicas))
            await nginx.start()
            options = [("grpc.max_concurrent_streams", 1024)]
            channel = aio.insecure_channel(f"127.0.0.1:{nginx.port}", options=options)
            channels.append(channel)
            direct = [aio.insecure_channel(r.address) for r in replicas]
            channels.extend(direct)
            yield Cluster(replicas, nginx, redis, database_url, channel, direct)
        finally:
            for channel in channels:
                await channel.close()
            await nginx.stop()
            await asyncio.gather(*(r.kill() for r in replicas))


def status_code(error: BaseException) -> str:
    if isinstance(error, aio.AioRpcError):
        return error.code().name
    return type(error).__name__
