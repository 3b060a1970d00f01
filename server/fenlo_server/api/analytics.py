"""AnalyticsService: a workspace's figures over a time range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from grpc import aio

from fenlo.v1 import analysis_pb2, analytics_pb2, analytics_pb2_grpc, lead_pb2
from fenlo_server import names
from fenlo_server.api.common import Deps, authorize_workspace, from_timestamp, to_timestamp
from fenlo_server.errors import Violations, not_found
from fenlo_server.storage.analytics import AnalyticsRepository
from fenlo_server.storage.models import utcnow

Ctx = aio.ServicerContext[Any, Any]
A = analysis_pb2
DEFAULT_RANGE = timedelta(days=30)
MAX_RANGE = timedelta(days=366)
EARLIEST = datetime.min.replace(tzinfo=UTC)  # of a Timestamp too: 0001-01-01
_SENTIMENTS = {
    "positive": A.SENTIMENT_LABEL_POSITIVE,
    "neutral": A.SENTIMENT_LABEL_NEUTRAL,
    "negative": A.SENTIMENT_LABEL_NEGATIVE,
}


_INTENTS = {n.removeprefix("INTENT_KIND_").lower(): v for n, v in A.IntentKind.items()}
_STATUSES = {
    name.removeprefix("LEAD_STATUS_"): value for name, value in lead_pb2.LeadStatus.items()
}


def _intent(kind: str) -> A.IntentKind.ValueType:
    return _INTENTS.get(kind, A.INTENT_KIND_UNSPECIFIED)


def _status(status: str) -> lead_pb2.LeadStatus.ValueType:
    return _STATUSES.get(status, lead_pb2.LEAD_STATUS_UNSPECIFIED)


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def GetWorkspaceStats(
        self, request: analytics_pb2.GetWorkspaceStatsRequest, context: Ctx
    ) -> analytics_pb2.WorkspaceStats:
        workspace_id = names.workspace_id(request.workspace, "workspace")
        authorize_workspace(workspace_id)
        violations = Violations()
        start = from_timestamp(request, "start_time", "start_time", violations)
        end = from_timestamp(request, "end_time", "end_time", violations)
        violations.raise_if_any()
        end = end or utcnow()
        # An end_time in January of year 1 has less than the default range before it.
        start = start or end - min(DEFAULT_RANGE, end - EARLIEST)
        if end <= start:
            violations.add("end_time", "must be after start_time")
        elif end - start > MAX_RANGE:
            violations.add("end_time", "must be at most 366 days after start_time")
        violations.raise_if_any()
        if await self._deps.directory.get(workspace_id) is None:
            raise not_found("workspace", request.workspace)
        async with self._deps.db.workspace(workspace_id) as session:
            figures = await AnalyticsRepository(session).figures(start, end)
        latency = figures.time_to_first_token
        return analytics_pb2.WorkspaceStats(
            workspace=names.workspace(workspace_id),
            start_time=to_timestamp(start),
            end_time=to_timestamp(end),
            conversations=figures.conversations,
            messages=analytics_pb2.MessageCounts(
                user=figures.messages.get("USER", 0),
                assistant=figures.messages.get("ASSISTANT", 0),
                agent=figures.messages.get("AGENT", 0),
            ),
            turns=figures.turns,
            intents=[
                analytics_pb2.IntentCount(intent=_intent(kind), count=n)
                for kind, n in figures.intents
            ],
            sentiments=[
                analytics_pb2.SentimentCount(
                    label=_SENTIMENTS.get(label, A.SENTIMENT_LABEL_UNSPECIFIED), count=n
                )
                for label, n in figures.sentiments
            ],
            average_quality=figures.average_quality,
            graded_answers=figures.graded_answers,
            handoffs=figures.handoffs,
            leads=[
                analytics_pb2.LeadStatusCount(status=_status(status), count=n)
                for status, n in figures.leads
            ],
            time_to_first_token=analytics_pb2.LatencyStats(
                count=latency.count,
                p50_ms=latency.p50_ms,
                p95_ms=latency.p95_ms,
                sample_size=latency.sample_size,
            ),
            provider_failovers=figures.provider_failovers,
            turns_with_failover=figures.turns_with_failover,
        )
