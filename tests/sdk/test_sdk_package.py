"""The SDK on its own: it never imports the server, depends on three packages only,
retries only what is safe to retry, and decodes Fenlo's rich errors."""

from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

import fenlo
from fenlo.v1 import chat_pb2

SDK = Path(__file__).resolve().parents[2] / "clients" / "python"


def test_the_sdk_never_imports_the_server() -> None:
    for path in (SDK / "fenlo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("fenlo_server"), f"{path} imports {name}"


def test_the_sdk_distribution_needs_only_grpc_and_protobuf() -> None:
    project = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(">")[0].split("<")[0].split("=")[0].strip() for dep in project["dependencies"]
    }
    assert names == {"grpcio", "protobuf", "googleapis-common-protos"}


def test_the_service_config_retries_only_unavailable_on_idempotent_methods() -> None:
    config = json.loads(fenlo.service_config())
    (method_config,) = config["methodConfig"]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert 1 < method_config["retryPolicy"]["maxAttempts"] <= 5
    methods = {entry["method"] for entry in method_config["name"]}
    assert "GetWorkspace" in methods and "CreateConversation" in methods
    assert not {m for m in methods if m.startswith(("Update", "Delete"))}
    assert not {"PostAgentMessage", "EraseContact", "Chat", "StreamEvents"} & methods


def _error(status: status_pb2.Status) -> aio.AioRpcError:
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    return aio.AioRpcError(
        code,
        aio.Metadata(),
        aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=status.message,
    )


def test_a_rich_status_becomes_a_typed_exception() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="slow")
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason="QUOTA_EXCEEDED", domain="fenlo.ai", metadata={"a": "b"})
    )
    status.details.add().Pack(
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=500_000_000))
    )
    status.details.add().Pack(
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject="workspaces/w", description="tokens_per_day"
                )
            ]
        )
    )
    error = fenlo.from_rpc_error(_error(status))
    assert isinstance(error, fenlo.ResourceExhausted)
    assert (error.code, error.reason, error.domain, error.metadata) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
        "fenlo.ai",
        {"a": "b"},
    )
    assert error.retry_after == 2.5
    assert error.quota_violations == [fenlo.QuotaViolation("workspaces/w", "tokens_per_day")]
    assert "QUOTA_EXCEEDED" in str(error)


def test_a_turn_error_keeps_its_turn_id() -> None:
    status = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="bad")
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT", domain="fenlo.ai")
    )
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="user_message.text", description="too long"
                )
            ]
        )
    )
    turn_error = chat_pb2.TurnError(turn_id="t1", status=status)
    error = fenlo.from_status(turn_error.status, turn_id=turn_error.turn_id)
    assert isinstance(error, fenlo.InvalidArgument)
    assert error.turn_id == "t1"
    assert error.violations == [fenlo.FieldViolation("user_message.text", "too long")]


def test_an_error_without_details_maps_by_code_alone() -> None:
    plain = aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, aio.Metadata(), aio.Metadata(), "late"
    )
    error = fenlo.from_rpc_error(plain)
    assert isinstance(error, fenlo.DeadlineExceeded)
    assert (error.reason, error.domain, error.violations, error.retry_after) == ("", "", [], None)
    assert error.__cause__ is plain
