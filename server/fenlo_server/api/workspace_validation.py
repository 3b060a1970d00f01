"""Validation of workspace fields: every bad field is reported at once."""

from __future__ import annotations

import math
import re
import zoneinfo

from google.protobuf import struct_pb2

from fenlo.v1 import workspace_pb2
from fenlo_server.api.common import check_text
from fenlo_server.errors import Violations

_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_CLOCK = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_STEP_NAME = re.compile(r"[a-z][a-z0-9_.]{0,63}")
MAX_PIPELINE_STEPS = 32
MAX_RETENTION_DAYS = 36500
MAX_OUTPUT_TOKENS = 131072
MAX_QUOTA = 1_000_000_000
MAX_DOCUMENT_BYTES = 512 * 1024 * 1024
MAX_TIME_ZONE = 64  # the longest IANA name has 32 characters


def validate_workspace(
    violations: Violations, workspace: workspace_pb2.Workspace, prefix: str = "workspace"
) -> None:
    check_text(
        violations, f"{prefix}.display_name", workspace.display_name, max_chars=200, required=True
    )
    validate_settings(violations, workspace.settings, f"{prefix}.settings")
    validate_quotas(violations, workspace.quotas, f"{prefix}.quotas")


def validate_settings(
    violations: Violations, settings: workspace_pb2.WorkspaceSettings, path: str
) -> None:
    check_text(violations, f"{path}.assistant_name", settings.assistant_name, max_chars=100)
    check_text(violations, f"{path}.system_prompt", settings.system_prompt, max_chars=20000)
    if settings.language and not _LANGUAGE.fullmatch(settings.language):
        violations.add(f"{path}.language", "must be a BCP 47 tag such as `en` or `pt-BR`")

    hours = settings.business_hours
    if hours.time_zone:
        try:
            if len(hours.time_zone) > MAX_TIME_ZONE:
                raise ValueError("too long")
            zoneinfo.ZoneInfo(hours.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a name the file system refuses (longer than a file name may be).
            violations.add(f"{path}.business_hours.time_zone", "must be an IANA time zone")
    elif hours.intervals:
        violations.add(f"{path}.business_hours.time_zone", "is required when intervals are set")
    if len(hours.intervals) > 50:
        violations.add(f"{path}.business_hours.intervals", "must have at most 50 entries")
    for i, interval in enumerate(hours.intervals[:50]):
        where = f"{path}.business_hours.intervals[{i}]"
        if interval.weekday == workspace_pb2.WEEKDAY_UNSPECIFIED:
            violations.add(f"{where}.weekday", "is required")
        elif interval.weekday not in workspace_pb2.Weekday.values():
            violations.add(f"{where}.weekday", "is not a known weekday")
        good = True
        for name in ("open_time", "close_time"):
            if not _CLOCK.fullmatch(getattr(interval, name)):
                violations.add(f"{where}.{name}", "must be HH:MM on a 24-hour clock")
                good = False
        if good and interval.close_time <= interval.open_time:
            violations.add(f"{where}.close_time", "must be later than open_time")

    contact = settings.handoff_contact
    check_text(
        violations, f"{path}.handoff_contact.display_name", contact.display_name, max_chars=200
    )
    check_text(violations, f"{path}.handoff_contact.phone", contact.phone, max_chars=40)
    check_text(violations, f"{path}.handoff_contact.url", contact.url, max_chars=2048)
    if contact.email and (len(contact.email) > 320 or not _EMAIL.fullmatch(contact.email)):
        violations.add(f"{path}.handoff_contact.email", "must be an email address")
    if contact.url and not contact.url.startswith(("https://", "http://")):
        violations.add(f"{path}.handoff_contact.url", "must be an http(s) URL")

    llm = settings.llm
    seen: set[int] = set()
    if len(llm.providers) > 8:
        violations.add(f"{path}.llm.providers", "must have at most 8 entries")
    for i, choice in enumerate(llm.providers[:8]):
        where = f"{path}.llm.providers[{i}]"
        if choice.provider == workspace_pb2.LLM_PROVIDER_UNSPECIFIED or (
            choice.provider not in workspace_pb2.LlmProvider.values()
        ):
            violations.add(f"{where}.provider", "must be a known provider")
        elif choice.provider in seen:
            violations.add(f"{where}.provider", "is listed twice")
        seen.add(choice.provider)
        check_text(violations, f"{where}.model", choice.model, max_chars=200)
    if llm.HasField("temperature") and not 0.0 <= llm.temperature <= 2.0:
        violations.add(f"{path}.llm.temperature", "must be between 0.0 and 2.0")
    if not 0 <= llm.max_output_tokens <= MAX_OUTPUT_TOKENS:
        violations.add(f"{path}.llm.max_output_tokens", f"must be 0 to {MAX_OUTPUT_TOKENS}")

    if not 0 <= settings.retention_days <= MAX_RETENTION_DAYS:
        violations.add(f"{path}.retention_days", f"must be 0 to {MAX_RETENTION_DAYS}")

    if len(settings.pipeline) > MAX_PIPELINE_STEPS:
        violations.add(f"{path}.pipeline", f"must have at most {MAX_PIPELINE_STEPS} steps")
    for i, step in enumerate(settings.pipeline[:MAX_PIPELINE_STEPS]):
        if not _STEP_NAME.fullmatch(step.name):
            violations.add(
                f"{path}.pipeline[{i}].name",
                "must be a step name: lower-case letters, digits, `_` or `.`, at most 64",
            )
        if step.params.ByteSize() > 16384:
            violations.add(f"{path}.pipeline[{i}].params", "must be at most 16 KiB")
        elif not _finite(step.params):
            # JSON, in which the settings are stored, has no NaN or Infinity.
            violations.add(f"{path}.pipeline[{i}].params", "must not hold NaN or Infinity")


def validate_quotas(
    violations: Violations, quotas: workspace_pb2.WorkspaceQuotas, path: str
) -> None:
    for field in (
        "requests_per_minute",
        "concurrent_chat_streams",
        "turns_per_minute",
        "tokens_per_day",
        "principal_requests_per_minute",
        "max_document_bytes",
    ):
        value = getattr(quotas, field)
        limit = MAX_DOCUMENT_BYTES if field == "max_document_bytes" else MAX_QUOTA
        if not 0 <= value <= limit:
            violations.add(f"{path}.{field}", f"must be 0 (server default) to {limit}")


def _finite(value: struct_pb2.Struct | struct_pb2.ListValue | struct_pb2.Value) -> bool:
    """Whether every number in a Struct (a ListValue, a Value) is finite."""
    if isinstance(value, struct_pb2.Struct):
        return all(_finite(v) for v in value.fields.values())
    if isinstance(value, struct_pb2.ListValue):
        return all(_finite(v) for v in value.values)
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return math.isfinite(value.number_value)
    if kind == "struct_value":
        return _finite(value.struct_value)
    if kind == "list_value":
        return _finite(value.list_value)
    return True
