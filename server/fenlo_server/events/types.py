"""The events a workspace emits. Each is written to the outbox in the same
transaction as the change it describes and carries the workspace's next
sequence number; the relay (``events/relay.py``) publishes them. Payloads hold
resource names and small values, never secrets; docs/events.md lists each
type's payload."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CONVERSATION_STARTED = "conversation.started"
CONVERSATION_STATE_CHANGED = "conversation.state_changed"
MESSAGE_CREATED = "message.created"
TURN_COMPLETED = "turn.completed"
SENTIMENT_CHANGED = "sentiment.changed"
LEAD_SCORE_CHANGED = "lead.score_changed"
LEAD_QUALIFIED = "lead.qualified"
LEAD_UPDATED = "lead.updated"
HANDOFF_REQUESTED = "handoff.requested"
AGENT_MESSAGE_POSTED = "agent_message.posted"
DOCUMENT_READY = "document.ready"
DOCUMENT_FAILED = "document.failed"
DOCUMENT_DELETED = "document.deleted"
# Payload: contact_hash (a keyed hash, never the id) and counts; no personal data.
CONTACT_ERASED = "contact.erased"

TYPES = (
    CONVERSATION_STARTED,
    CONVERSATION_STATE_CHANGED,
    MESSAGE_CREATED,
    TURN_COMPLETED,
    SENTIMENT_CHANGED,
    LEAD_SCORE_CHANGED,
    LEAD_QUALIFIED,
    LEAD_UPDATED,
    HANDOFF_REQUESTED,
    AGENT_MESSAGE_POSTED,
    DOCUMENT_READY,
    DOCUMENT_FAILED,
    DOCUMENT_DELETED,
    CONTACT_ERASED,
)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
