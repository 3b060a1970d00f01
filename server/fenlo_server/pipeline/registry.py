"""The step registry: built-in steps and the ``fenlo.pipeline_steps`` entry points.

A step is registered under its name with a factory that takes the workspace's
parameters for it (a JSON object) and returns the configured step, raising
ValueError for bad parameters. A workspace's pipeline is its ordered list of
step names with parameters (``settings.pipeline``), or :data:`DEFAULT_PIPELINE`.
Adding or removing a step touches no engine code.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from fenlo_server.pipeline.engine import Pipeline
from fenlo_server.pipeline.step import Step

log = logging.getLogger("fenlo.pipeline")
ENTRY_POINT_GROUP = "fenlo.pipeline_steps"
DEFAULT_PIPELINE = (
    "load_context",
    "prompt_guard",
    "pii_redaction",
    "rag_retrieval",
    "llm_stream",
    "sentiment_analysis",
    "intent_classifier",
    "entity_extraction",
    "quality_scorer",
    "lead_scoring",
    "handoff_decision",
    "persistence",
)
StepFactory = Callable[[Mapping[str, Any]], Step]


class StepRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, StepFactory] = {}
        self._cache: OrderedDict[str, Pipeline] = OrderedDict()

    def register(self, name: str, factory: StepFactory, *, replace: bool = False) -> None:
        if name in self._factories and not replace:
            raise ValueError(f"a pipeline step named {name!r} is already registered")
        self._factories[name] = factory
        self._cache.clear()

    def unregister(self, name: str) -> None:
        self._factories.pop(name, None)
        self._cache.clear()

    def forget_pipelines(self) -> None:
        """Drop the built pipelines (their steps hold workspace settings' values)."""
        self._cache.clear()

    def names(self) -> list[str]:
        return sorted(self._factories)

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> list[str]:
        """Register the steps other packages declare; return their names."""
        loaded = []
        for point in entry_points(group=group):
            try:
                self.register(point.name, point.load())
                loaded.append(point.name)
            except Exception:
                log.exception("could not load pipeline step", extra={"entry_point": point.name})
        return loaded

    def build(self, config: Sequence[Mapping[str, Any]] | None) -> Pipeline:
        """The pipeline for a workspace's ``settings.pipeline`` (cached by content)."""
        entries = list(config or [{"name": name} for name in DEFAULT_PIPELINE])
        key = json.dumps(entries, sort_keys=True, default=str)
        pipeline = self._cache.get(key)
        if pipeline is None:
            pipeline = Pipeline([self._make(e) for e in entries])
            self._cache[key] = pipeline
            while len(self._cache) > 256:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return pipeline

    def _make(self, entry: Mapping[str, Any]) -> Step:
        name = str(entry.get("name", ""))
        factory = self._factories.get(name)
        if factory is None:
            raise ValueError(f"unknown pipeline step {name!r}; known: {', '.join(self.names())}")
        params = entry.get("params") or {}
        if not isinstance(params, Mapping):
            raise ValueError(f"the parameters of {name} must be an object")
        step = factory(params)
        if step.name != name:
            raise ValueError(f"step registered as {name!r} calls itself {step.name!r}")
        return step

    def check(self, config: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, str]]:
        """Problems of a pipeline configuration as (index, "name" or "params", description)."""
        problems: list[tuple[int, str, str]] = []
        for i, entry in enumerate(config):
            name = str(entry.get("name", ""))
            if name not in self._factories:
                problems.append(
                    (i, "name", f"unknown pipeline step {name!r}; known: {', '.join(self.names())}")
                )
                continue
            try:
                self._make(entry)
            except ValueError as error:
                problems.append((i, "params", str(error)))
        if not problems:
            try:
                Pipeline([self._make(e) for e in config])
            except ValueError as error:
                problems.append((max(len(config) - 1, 0), "name", str(error)))
        return problems
