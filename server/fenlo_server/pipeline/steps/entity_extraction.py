"""entity_extraction: dates and times, money, emails, phone numbers and the names
of the workspace's products or services in the user message.

Parameters: ``products`` (list of product or service names).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fenlo_server.pipeline.analysis.entities import extract_entities
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.steps.params import only, strings

NAME = "entity_extraction"


class EntityExtraction:
    name = NAME
    phase = "post"
    essential = False

    def __init__(self, products: tuple[str, ...]) -> None:
        self.products = products

    async def run(self, ctx: MessageContext) -> None:
        zone = (ctx.settings.get("business_hours") or {}).get("time_zone") or "UTC"
        ctx.entities = extract_entities(
            ctx.text,
            products=self.products,
            now=datetime.now(UTC),
            time_zone=zone,
            language=ctx.language,
        )
        for entity in ctx.entities:
            if entity.kind in ("email", "phone", "person"):
                key = "name" if entity.kind == "person" else entity.kind
                ctx.contact.setdefault(key, entity.value)


def create(params: Mapping[str, Any]) -> EntityExtraction:
    only(params, "products")
    return EntityExtraction(strings(params, "products"))
