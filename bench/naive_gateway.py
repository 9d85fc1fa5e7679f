"""The naive gateway of the seed chapter: the baseline that bench/gateway.py measures ours against.

Written on purpose the way the seed chapter shows it, and kept that way (do not optimise it):
- a new `httpx.AsyncClient()` per request, created inside the handler (no connection reuse);
- blocking redis-py calls inside `async def` handlers (each one stalls the event loop);
- conversation history in Redis (a list per session, last 10 turns, 1 h TTL);
- no auth, no rate limit, no events, FastAPI body models as the chapter has them.

Routes: `POST /v1/chat/completions` (OpenAI-compatible; the history of `X-Session-Id`, when sent, is
prepended), `POST /chat` ({session_id, message} -> {session_id, content}), `GET /health`.

Reads: the upstream OpenAI-compatible server, Redis. Writes: Redis history lists `naive:session:<id>`.

Example:

    python -m bench.naive_gateway --port 9200 --upstream http://127.0.0.1:9100 \
        --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

import httpx
import redis
from fastapi import FastAPI, Header
from pydantic import BaseModel

SYSTEM_PROMPT = "You are a helpful customer service assistant."
MAX_TURNS = 10
TTL_S = 3600


class Message(BaseModel):
    role: str
    content: str


class CompletionRequest(BaseModel):
    model: str = "tiny"
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None


class ChatRequest(BaseModel):
    session_id: str | None = None
    message: str
    max_tokens: int | None = None


def create_app(upstream: str, redis_url: str, model: str = "tiny") -> FastAPI:
    app = FastAPI(title="naive gateway")
    r = redis.Redis.from_url(redis_url, decode_responses=True)  # blocking client, as in the chapter

    def history(session_id: str) -> list[dict]:
        return [json.loads(m) for m in r.lrange(f"naive:session:{session_id}", 0, -1)]

    def save(session_id: str, user: str, answer: str) -> None:
        key = f"naive:session:{session_id}"
        r.rpush(key, json.dumps({"role": "user", "content": user}))
        r.rpush(key, json.dumps({"role": "assistant", "content": answer}))
        r.ltrim(key, -2 * MAX_TURNS, -1)
        r.expire(key, TTL_S)

    async def call_model(body: dict[str, Any]) -> dict:
        async with httpx.AsyncClient(timeout=60.0) as client:  # a new client (and connection) per request
            resp = await client.post(f"{upstream}/v1/chat/completions", json=body)
            resp.raise_for_status()
            return resp.json()

    @app.post("/v1/chat/completions")
    async def chat_completions(req: CompletionRequest, x_session_id: str | None = Header(None)):
        messages = [m.model_dump() for m in req.messages]
        if x_session_id:
            messages = history(x_session_id) + messages
        body = {"model": model, "messages": messages}
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        data = await call_model(body)
        if x_session_id:
            save(x_session_id, req.messages[-1].content, data["choices"][0]["message"]["content"])
        return data

    @app.post("/chat")
    async def chat(req: ChatRequest):
        session_id = req.session_id or uuid.uuid4().hex
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            *history(session_id),
            {"role": "user", "content": req.message},
        ]
        body = {"model": model, "messages": messages}
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        data = await call_model(body)
        answer = data["choices"][0]["message"]["content"]
        save(session_id, req.message, answer)
        return {"session_id": session_id, "content": answer}

    @app.get("/health")
    async def health():
        r.ping()
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args(argv)
    # uvicorn's defaults, as the chapter runs it (`uvicorn app:app`)
    uvicorn.run(
        create_app(args.upstream, args.redis, args.model),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
