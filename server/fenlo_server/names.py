"""Resource names (AIP-122): parse what callers send, format what we return.

Parsing never touches storage: a name is first checked for shape, then the
caller's access to its workspace is checked, and only then is anything looked up.
"""

from __future__ import annotations

import re

from fenlo_server.errors import FieldViolation, InvalidArgument, Reason

_ID = r"([0-9a-z][0-9a-z-]{0,62})"
_PATTERNS: dict[str, re.Pattern[str]] = {
    "workspace": re.compile(rf"workspaces/{_ID}"),
    "api_key": re.compile(rf"workspaces/{_ID}/apiKeys/{_ID}"),
    "conversation": re.compile(rf"workspaces/{_ID}/conversations/{_ID}"),
    "message": re.compile(rf"workspaces/{_ID}/conversations/{_ID}/messages/{_ID}"),
    "document": re.compile(rf"workspaces/{_ID}/documents/{_ID}"),
    "curated_answer": re.compile(rf"workspaces/{_ID}/curatedAnswers/{_ID}"),
    "lead": re.compile(rf"workspaces/{_ID}/leads/{_ID}"),
    "webhook": re.compile(rf"workspaces/{_ID}/webhooks/{_ID}"),
    "delivery": re.compile(rf"workspaces/{_ID}/webhooks/{_ID}/deliveries/{_ID}"),
}
_EXAMPLES = {
    "workspace": "workspaces/{workspace}",
    "api_key": "workspaces/{workspace}/apiKeys/{api_key}",
    "conversation": "workspaces/{workspace}/conversations/{conversation}",
    "message": "workspaces/{workspace}/conversations/{conversation}/messages/{message}",
    "document": "workspaces/{workspace}/documents/{document}",
    "curated_answer": "workspaces/{workspace}/curatedAnswers/{curated_answer}",
    "lead": "workspaces/{workspace}/leads/{lead}",
    "webhook": "workspaces/{workspace}/webhooks/{webhook}",
    "delivery": "workspaces/{workspace}/webhooks/{webhook}/deliveries/{delivery}",
}


def parse(kind: str, name: str, field: str) -> tuple[str, ...]:
    """Return the ids in ``name`` (workspace first) or raise INVALID_ARGUMENT."""
    match = _PATTERNS[kind].fullmatch(name)
    if match is None:
        description = (
            "is required" if not name else f"must have the form {_EXAMPLES[kind]}, got {name!r}"
        )
        if len(name) > 300:
            description = f"must have the form {_EXAMPLES[kind]}"
        raise InvalidArgument(
            Reason.ERROR_REASON_RESOURCE_NAME_INVALID,
            f"invalid {field}: {description}",
            violations=[FieldViolation(field, description)],
        )
    return match.groups()


def workspace_id(name: str, field: str = "name") -> str:
    return parse("workspace", name, field)[0]


def workspace(ws: str) -> str:
    return f"workspaces/{ws}"


def api_key(ws: str, key: str) -> str:
    return f"workspaces/{ws}/apiKeys/{key}"


def conversation(ws: str, conv: str) -> str:
    return f"workspaces/{ws}/conversations/{conv}"


def message(ws: str, conv: str, msg: str) -> str:
    return f"workspaces/{ws}/conversations/{conv}/messages/{msg}"


def document(ws: str, doc: str) -> str:
    return f"workspaces/{ws}/documents/{doc}"


def event(ws: str, event_id: str) -> str:
    return f"workspaces/{ws}/events/{event_id}"


def webhook(ws: str, hook: str) -> str:
    return f"workspaces/{ws}/webhooks/{hook}"


def delivery(ws: str, hook: str, delivery_id: str) -> str:
    return f"workspaces/{ws}/webhooks/{hook}/deliveries/{delivery_id}"
