"""pii_redaction: masks emails, phone numbers, card numbers and IBANs in what goes
to external LLMs (and, if the workspace asks, in what is stored), and captures
the contact details for the lead.

Parameters: ``mask_in_storage`` (false: stored messages keep the original).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.llm.types import ChatMessage
from fenlo_server.pipeline.analysis.pii import contact_details, find_pii, redact
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.steps.params import get, only

NAME = "pii_redaction"


class PiiRedaction:
    name = NAME
    phase = "pre"
    essential = True  # better no answer than personal data sent to a third party

    def __init__(self, mask_in_storage: bool) -> None:
        self.mask_in_storage = mask_in_storage

    async def run(self, ctx: MessageContext) -> None:
        spans = find_pii(ctx.text)
        ctx.pii = spans
        if spans:
            masked = redact(ctx.text, spans)
            ctx.llm_text = masked
            if self.mask_in_storage:
                ctx.stored_text = masked
            ctx.contact.update(contact_details(spans))
        # Earlier messages were stored as written: mask them for the LLM too.
        ctx.history = [
            ChatMessage(m.role, redact(m.content)) if find_pii(m.content) else m
            for m in ctx.history
        ]


def create(params: Mapping[str, Any]) -> PiiRedaction:
    only(params, "mask_in_storage")
    return PiiRedaction(get(params, "mask_in_storage", bool, False))
