"""Providers that speak OpenAI's chat-completions API: Groq (``groq`` SDK) and
OpenAI or any compatible server (``openai`` SDK: vLLM, Ollama, a proxy).

Both SDKs are driven with ``max_retries=0``: retrying is the router's job, and
an SDK retry would hide a failure behind seconds of delay. Their errors are
sorted into :class:`ProviderFailure` (fail over, count against the breaker) and
:class:`ProviderRequestError` (4xx other than 408 and 429: neither).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from fenlo_server.llm.errors import ProviderFailure, ProviderRequestError
from fenlo_server.llm.types import LlmRequest, StreamOutcome, Usage

CONTINUE_INSTRUCTION = (
    "The assistant's answer below was cut off. Continue it exactly where it stops, "
    "without repeating any of it."
)
RETRYABLE_4XX = {408, 429}


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date);
    None when absent or unreadable."""
    if headers is None:
        return None
    seconds: float | None = None
    try:
        if value := headers.get("retry-after-ms"):
            seconds = float(value) / 1000.0
        elif value := headers.get("retry-after"):
            try:
                seconds = float(value)
            except ValueError:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        return None
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def classify(provider: str, error: BaseException) -> ProviderFailure | ProviderRequestError:
    """Sort an SDK (or transport) error into failure or refused request."""
    status = getattr(error, "status_code", None)
    response = getattr(error, "response", None)
    message = str(error) or type(error).__name__
    if isinstance(status, int):
        retry_after = _retry_after(getattr(response, "headers", None))
        if status == 429:
            return ProviderFailure(provider, "rate_limited", message, retry_after=retry_after)
        if status >= 500:
            return ProviderFailure(provider, "server_error", message, retry_after=retry_after)
        if status in RETRYABLE_4XX:
            return ProviderFailure(provider, "timeout", message, retry_after=retry_after)
        return ProviderRequestError(provider, f"http_{status}", message)
    name = type(error).__name__
    if "Timeout" in name:
        return ProviderFailure(provider, "timeout", message)
    if "Connection" in name or "Protocol" in name or isinstance(error, OSError):
        return ProviderFailure(provider, "connection", message)
    if name == "APIError":
        return ProviderFailure(provider, "stream_error", message)
    return ProviderFailure(provider, "malformed", f"{name}: {message}")


def build_messages(request: LlmRequest) -> list[dict[str, str]]:
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    if request.assistant_prefix:
        messages.append({"role": "system", "content": CONTINUE_INSTRUCTION})
        messages.append({"role": "assistant", "content": request.assistant_prefix})
    return messages


class ChatCompletionsProvider:
    """A provider over an SDK client whose ``chat.completions.create`` streams."""

    def __init__(
        self,
        name: str,
        client: Any,
        default_model: str,
        *,
        request_usage: bool = False,
    ) -> None:
        self.name = name
        self.default_model = default_model
        self._client = client
        self._request_usage = request_usage

    async def stream(
        self, request: LlmRequest, model: str | None, outcome: StreamOutcome
    ) -> AsyncIterator[str]:
        kwargs: dict[str, Any] = {
            "model": model or self.default_model,
            "messages": build_messages(request),
            "stream": True,
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens:
            kwargs["max_tokens"] = request.max_tokens
        if self._request_usage:
            kwargs["stream_options"] = {"include_usage": True}
        try:
            stream = await self._client.chat.completions.create(**kwargs)
        except Exception as error:
            raise classify(self.name, error) from error
        try:
            async for chunk in stream:
                usage = chunk.usage or getattr(getattr(chunk, "x_groq", None), "usage", None)
                if usage is not None:
                    outcome.usage = Usage(
                        prompt_tokens=usage.prompt_tokens or 0,
                        completion_tokens=usage.completion_tokens or 0,
                    )
                for choice in chunk.choices:
                    text = choice.delta.content if choice.delta is not None else None
                    if text:
                        yield text
                    if choice.finish_reason:
                        outcome.finished = True
                        outcome.finish_reason = str(choice.finish_reason)
        except (ProviderFailure, ProviderRequestError):
            raise
        except Exception as error:
            raise classify(self.name, error) from error
        finally:
            await stream.close()


def groq_provider(
    *, api_key: str, base_url: str | None, model: str, timeout: float
) -> ChatCompletionsProvider:
    from groq import AsyncGroq

    client = AsyncGroq(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
    return ChatCompletionsProvider("groq", client, model)


def openai_provider(
    *,
    api_key: str,
    base_url: str | None,
    model: str,
    timeout: float,
    request_usage: bool,
) -> ChatCompletionsProvider:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
    return ChatCompletionsProvider("openai", client, model, request_usage=request_usage)
