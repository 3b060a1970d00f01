"""Load: hundreds of concurrent Chat streams against Fenlo in its own process.

Fenlo runs as the benchmark runs it (:mod:`fenlo_server.bench.fenlo_proc`: the
embedded defaults, SQLite, quotas lifted, the offline provider paced so the
streams really overlap) and the client load is the benchmark's too
(:mod:`fenlo_server.bench.load`, asked for what each stream saw). Loopback only;
every wait is bounded and every process is stopped in a ``finally``.

- The same load twice on one server: no failed turn, and the server's RSS after
  the second run stays within a bound per stream of the RSS after the first.
- Afterwards every conversation holds exactly the user and assistant messages of
  the turns its client saw complete (through ``ConversationService.ListMessages``).
- With a local OpenAI-compatible server in front of the offline provider that
  fails part of its requests, every turn still succeeds (failover).
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import grpc
import pytest

from fenlo.v1 import conversation_pb2, conversation_pb2_grpc
from fenlo_server.bench.openai_server import LocalOpenAIServer, Mode
from tests.reliability.ledger import Ledger

pytestmark = pytest.mark.reliability

PYTHON = sys.executable
STREAMS = 200
WORKSPACES = 3
RATE = 100.0  # offline tokens a second: a turn streams for a while, so streams overlap
TURNS = 30  # per stream and run: 200 x 30 turns at ~100-130 turns/s, about a minute a run
FAULT_TURNS = 6
TEXTS = [
    "Hello, can you tell me what you offer?",
    "Thanks, and what does it cost?",
    "Do you deliver on weekends?",
    "Can I change my order later?",
]
# The server's RSS may grow by this much per stream between the end of the first
# run and the end of the second (same load, same process). Measured on two cores:
# +13 to +34 KiB per stream (2.6 to 6.8 MiB per run of 200 x 30 turns, still
# growing slowly after four runs), while runs of 200 x 2 turns on new
# conversations grew by less than 3 KiB per stream: the growth follows the turns
# and the database's size (SQLite's page caches filling, most likely), not the
# streams. A stream's state kept after it ends would add far more than this.
LEAK_KIB_PER_STREAM = 64.0
START_TIMEOUT_S = 180.0
LOAD_TIMEOUT_S = 420.0
STOP_TIMEOUT_S = 20.0
SETTLE_S = 2.0


class FenloProcess:
    """``fenlo_server.bench.fenlo_proc`` in its own process, stopped by :meth:`stop`."""

    def __init__(self, data_dir: Path, log: IO[str], *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "fenlo_server.bench.fenlo_proc",
                "--data-dir",
                str(data_dir),
                "--rate",
                str(RATE),
                "--history",
                "10",
                "--workspaces",
                str(WORKSPACES),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        self.info: dict[str, Any] = {}

    def wait_listening(self, timeout: float) -> None:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError(f"fenlo_proc did not listen within {timeout:.0f} s")
        line = self.process.stdout.readline()  # the one JSON line, written at once
        if not line:
            raise RuntimeError(f"fenlo_proc exited ({self.process.poll()}) before it listened")
        self.info = json.loads(line)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.info['port']}"

    def rss_kib(self, settle: float = 0.0) -> int:
        time.sleep(settle)  # the streams' last frees and the outbox's last writes
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


@contextmanager
def fenlo(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[FenloProcess]:
    log_path = tmp_path / "fenlo.log"
    with open(log_path, "w") as log:
        server = FenloProcess(tmp_path / "data", log, *args, env=env or {})
        try:
            server.wait_listening(START_TIMEOUT_S)
            yield server
        except BaseException:
            log.flush()
            sys.stderr.write("fenlo_proc log (tail):\n" + log_path.read_text()[-3000:])
            raise
        finally:
            server.stop()


def streams_of(info: dict[str, Any]) -> list[dict[str, Any]]:
    """STREAMS new conversations, spread round-robin over the workspaces."""
    spaces = info["workspaces"]
    return [
        {"token": spaces[i % len(spaces)]["token"], "parent": spaces[i % len(spaces)]["parent"]}
        for i in range(STREAMS)
    ]


def drive(server: FenloProcess, turns: int) -> dict[str, Any]:
    """One run of the benchmark's client load, in its own process; its result."""
    spec = {
        "target": server.target,
        "mode": "turns",
        "streams": streams_of(server.info),
        "turns": turns,
        "texts": TEXTS,
        "per_stream": True,
    }
    process = subprocess.Popen(
        [PYTHON, "-m", "fenlo_server.bench.load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        out, _ = process.communicate(json.dumps(spec) + "\n", timeout=LOAD_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    assert process.returncode == 0, f"the client load failed ({process.returncode})"
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert len(result["conversations"]) == STREAMS
    return result


def record_turns(ledger: Ledger, result: dict[str, Any], turns: int) -> int:
    """Record a run's turns; the number that succeeded."""
    succeeded = sum(s["completed"] for s in result["conversations"])
    ledger.turns(STREAMS * turns, succeeded)
    return succeeded


def stored_messages(
    stub: conversation_pb2_grpc.ConversationServiceStub, conversation: str, token: str
) -> list[Any]:
    """Every message of ``conversation``, through ListMessages, page by page."""
    messages: list[Any] = []
    page_token = ""
    for _ in range(100):  # bounded: a conversation here holds a few dozen messages
        response = stub.ListMessages(
            conversation_pb2.ListMessagesRequest(
                parent=conversation, page_size=100, page_token=page_token
            ),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=30,
        )
        messages.extend(response.messages)
        page_token = response.next_page_token
        if not page_token:
            return messages
    raise AssertionError(f"{conversation}: ListMessages did not end")


def check_stored(server: FenloProcess, ledger: Ledger, results: list[dict[str, Any]]) -> None:
    """Stored user and assistant messages against the turns each client saw complete."""
    tokens = {w["parent"]: w["token"] for w in server.info["workspaces"]}
    seen_all = [seen for result in results for seen in result["conversations"]]
    assert all(seen["conversation"] for seen in seen_all), "a stream never started"
    rows = lost = duplicated = 0
    wrong: list[str] = []
    with grpc.insecure_channel(server.target) as channel:
        stub = conversation_pb2_grpc.ConversationServiceStub(channel)
        for seen in seen_all:
            name, completed = seen["conversation"], seen["completed"]
            workspace = "/".join(name.split("/")[:2])
            messages = stored_messages(stub, name, tokens[workspace])
            rows += len(messages)
            for role in (
                conversation_pb2.MESSAGE_ROLE_USER,
                conversation_pb2.MESSAGE_ROLE_ASSISTANT,
            ):
                turn_ids = Counter(m.turn_id for m in messages if m.role == role)
                stored = sum(turn_ids.values())
                duplicated += stored - len(turn_ids)  # one turn's message stored again
                lost += max(0, completed - len(turn_ids))
                if stored != completed:
                    role_name = conversation_pb2.MessageRole.Name(role)
                    wrong.append(f"{name}: {stored} {role_name}, {completed} turns completed")
    ledger.checked(rows=rows)
    ledger.found(
        lost=lost,
        duplicated=duplicated,
        why=f"load: stored messages against completed turns: {wrong[:3]}",
    )
    assert not wrong, f"{len(wrong)} conversations differ: {wrong[:5]}"


def test_200_streams_twice_fail_no_turn_keep_memory_flat_and_store_every_turn_once(
    tmp_path: Path, ledger: Ledger
) -> None:
    started = time.monotonic()
    with fenlo(tmp_path) as server:
        first = drive(server, TURNS)
        after_first = server.rss_kib(settle=SETTLE_S)
        second = drive(server, TURNS)
        after_second = server.rss_kib(settle=SETTLE_S)
        for result in (first, second):
            assert record_turns(ledger, result, TURNS) == STREAMS * TURNS, result["errors"]
            assert result["failed"] == 0, result["errors"]

        growth = after_second - after_first
        per_stream = growth / STREAMS
        ledger.note(
            f"load: {STREAMS} streams x {TURNS} turns x 2 runs over {WORKSPACES} workspaces "
            f"in {first['wall_s']:.0f} s + {second['wall_s']:.0f} s; server RSS "
            f"{after_first / 1024:.1f} MiB after run 1, {after_second / 1024:.1f} MiB after "
            f"run 2 ({growth:+d} KiB, {per_stream:+.2f} KiB/stream, bound "
            f"{LEAK_KIB_PER_STREAM} KiB/stream)"
        )
        leaking = per_stream > LEAK_KIB_PER_STREAM
        ledger.found(
            leaks=STREAMS if leaking else 0,
            why=f"load: server RSS grew {per_stream:.2f} KiB per stream across the second run",
        )
        assert not leaking, f"RSS grew {per_stream:.2f} KiB per stream across the second run"

        check_stored(server, ledger, [first, second])
    ledger.note(f"load: memory scenario took {time.monotonic() - started:.0f} s")


class FlakyProvider:
    """The benchmark's local OpenAI-compatible server on a thread of its own, failing
    part of the time: cycles of ``ok``, ``http_500``, ``ok``, ``drop``."""

    CYCLE: tuple[tuple[Mode, float], ...] = (
        ("ok", 0.6),
        ("http_500", 0.3),
        ("ok", 0.6),
        ("drop", 0.3),
    )

    def __init__(self) -> None:
        self.server = LocalOpenAIServer(chunks=20)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="flaky-openai", daemon=True)
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        await self.server.start()
        self._started.set()
        try:
            while not self._stop.is_set():
                for mode, seconds in self.CYCLE:
                    self.server.mode = mode
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), seconds)
        finally:
            await self.server.stop()

    def __enter__(self) -> FlakyProvider:
        self.thread.start()
        if not self._started.wait(10):
            raise TimeoutError("the local OpenAI server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=STOP_TIMEOUT_S)

    @property
    def failures(self) -> int:
        return len(self.server.failure_times)


def test_turns_fail_over_to_the_offline_provider_when_openai_fails_under_load(
    tmp_path: Path, ledger: Ledger
) -> None:
    with FlakyProvider() as provider:
        env = {
            "OPENAI_API_KEY": "x",
            "FENLO_OPENAI_BASE_URL": provider.server.base_url,
            # A short cooldown: the breaker opens and closes again during the run, so
            # requests keep reaching (and failing at) the provider.
            "FENLO_BREAKER_COOLDOWN_SECONDS": "2",
        }
        with fenlo(tmp_path, "--llm-order", "openai,offline", env=env) as server:
            result = drive(server, FAULT_TURNS)
            requests, failures = provider.server.requests, provider.failures
            ledger.fault("llm provider failure", failures)
            succeeded = record_turns(ledger, result, FAULT_TURNS)
            ledger.note(
                f"failover: {STREAMS} streams x {FAULT_TURNS} turns in {result['wall_s']:.0f} s; "
                f"openai got {requests} requests, failed {failures}, "
                f"answered {provider.server.replies}"
            )
            assert failures > 0, "the provider never failed: nothing was tested"
            assert provider.server.replies > 0, "the provider never answered"
            assert result["failed"] == 0, result["errors"]
            assert succeeded == STREAMS * FAULT_TURNS
            check_stored(server, ledger, [result])
