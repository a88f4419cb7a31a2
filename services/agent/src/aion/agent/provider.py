"""An external OpenAI-compatible chat completions API, for tasks the router sends to ``api``."""

from __future__ import annotations

import json
import types
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import httpx

from aion.agent import model
from aion.core import errors


class Provider:
    """Streams chat completions from ``base_url`` (``/chat/completions``, SSE)."""

    def __init__(
        self, *, base_url: str, api_key: str, model: str, cost_per_1k_tokens: float
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
        )
        self.model = model
        self.cost_per_1k_tokens = cost_per_1k_tokens

    async def generate(
        self,
        messages: Sequence[tuple[str, str]],
        *,
        max_tokens: int,
        temperature: float | None,
        seed: int | None,
        timeout: float,
    ) -> AsyncIterator[model.Chunk]:
        """Stream the reply to ``messages`` ((role, content) pairs)."""
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
            "messages": [{"role": r, "content": c} for r, c in messages],
        }
        if temperature is not None:
            body["temperature"] = temperature
        if seed is not None:
            body["seed"] = seed
        try:
            async with self._client.stream(
                "POST", "/chat/completions", json=body, timeout=timeout
            ) as resp:
                if resp.status_code >= 400:
                    text = (await resp.aread()).decode(errors="replace")[:300]
                    cls = (
                        errors.Unavailable
                        if resp.status_code >= 500 or (resp.status_code == 429)
                        else errors.FailedPrecondition
                    )
                    raise cls(f"the model API answered {resp.status_code}: {text}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    yield _chunk(json.loads(data))
        except httpx.HTTPError as exc:
            raise errors.Unavailable(f"the model API is unavailable: {exc}") from exc

    async def close(self) -> None:
        """Close the HTTP client; safe to call twice."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.close()


def _chunk(payload: dict[str, Any]) -> model.Chunk:
    failure = payload.get("error")
    if failure:
        # The status line was sent already: the server reports a failure as an event.
        detail = failure if isinstance(failure, dict) else {"message": str(failure)}
        code = str(detail.get("code") or detail.get("type") or "")
        cls = (
            errors.FailedPrecondition
            if code in ("invalid_argument", "invalid_request_error", "failed_precondition")
            else errors.Unavailable
        )
        raise cls(f"the model API failed mid-stream: {detail.get('message', '')}")
    text = ""
    for choice in payload.get("choices") or ():
        text += (choice.get("delta") or {}).get("content") or ""
    usage = payload.get("usage")
    if usage:
        return model.Chunk(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            final=True,
        )
    return model.Chunk(text=text)
