"""A trivial, fast OpenAI-compatible upstream for benchmarks and gateway tests.

Raw ASGI on uvicorn (httptools + uvloop), so that the gateway, not the stub, is what a benchmark
measures. It answers `POST /v1/chat/completions` (stream or not), `GET /v1/models`, `GET /health`.

The answer is derived from the request so that tests can observe what the gateway sent:
    "echo model=<model> messages=<count> last=<last message>"
streamed one word per chunk, with a final usage chunk when `stream_options.include_usage`.
Extra request fields steer it (the gateway forwards unknown fields):
    stub_delay_ms   sleep before answering (timeouts)
    stub_status     answer with this HTTP status and an OpenAI-style error

Example:

    python -m bench.upstream_stub --port 9100 [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import orjson

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _answer(body: dict) -> str:
    messages = body.get("messages") or []
    last = messages[-1].get("content") if messages else ""
    if not isinstance(last, str):
        last = str(last)
    return f"echo model={body.get('model')} messages={len(messages)} last={last[:60]}"


def _prompt_tokens(body: dict) -> int:
    return sum(len(str(m.get("content") or "").split()) + 4 for m in body.get("messages") or [])


class Stub:
    def __init__(self, delay_ms: float = 0.0):
        self.delay_s = delay_ms / 1000.0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if scope["method"] == "GET":
            if path == "/v1/models":
                data = {"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "stub"}]}
                return await _reply(send, 200, orjson.dumps(data))
            if path in ("/health", "/ping"):
                return await _reply(send, 200, b"{}")
            return await _reply(send, 404, b'{"error": {"message": "not found"}}')
        raw = b""
        more = True
        while more:
            msg = await receive()
            raw += msg.get("body", b"")
            more = msg.get("more_body", False)
        if path != "/v1/chat/completions":
            return await _reply(send, 404, b'{"error": {"message": "not found"}}')
        body = orjson.loads(raw)
        delay = body.get("stub_delay_ms")
        delay_s = delay / 1000.0 if delay is not None else self.delay_s
        if delay_s:
            await asyncio.sleep(delay_s)
        status = body.get("stub_status")
        if status:
            err = {"error": {"message": f"stub error {status}", "type": "stub", "code": status}}
            return await _reply(send, int(status), orjson.dumps(err))
        text = _answer(body)
        words = text.split(" ")
        usage = {
            "prompt_tokens": _prompt_tokens(body),
            "completion_tokens": len(words),
            "total_tokens": _prompt_tokens(body) + len(words),
        }
        cid = f"chatcmpl-stub{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        model = body.get("model") or "tiny"
        if not body.get("stream"):
            out = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            return await _reply(send, 200, orjson.dumps(out))
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            c = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(c) + b"\n\n"

        await send(
            {"type": "http.response.body", "body": chunk({"role": "assistant", "content": ""}), "more_body": True}
        )
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            await send({"type": "http.response.body", "body": chunk({"content": piece}), "more_body": True})
        await send({"type": "http.response.body", "body": chunk({}, "stop"), "more_body": True})
        if (body.get("stream_options") or {}).get("include_usage"):
            u = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await send({"type": "http.response.body", "body": b"data: " + orjson.dumps(u) + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _reply(send, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": payload})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    uvicorn.run(
        Stub(args.delay_ms),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
