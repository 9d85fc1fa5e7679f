"""Ask an OpenAI-compatible teacher model for the answer a thumbs-down should have had."""

from __future__ import annotations

import logging

import httpx

log = logging.getLogger(__name__)


def completions_url(base_url: str) -> str:
    """Accept a server root, a `/v1` base or the full `/v1/chat/completions` URL."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


async def ask_teacher(
    client: httpx.AsyncClient, base_url: str, model: str, messages: list[dict], timeout_s: float
) -> str | None:
    """The teacher's answer, or None when it fails (the pair is then emitted as needs_chosen)."""
    try:
        response = await client.post(
            completions_url(base_url),
            json={"model": model, "messages": messages, "temperature": 0},
            timeout=timeout_s,
        )
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        return content.strip() or None
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        log.warning("teacher request failed", extra={"error": str(exc), "teacher_url": base_url})
        return None
