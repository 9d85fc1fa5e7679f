"""The gateway's upstream HTTP client against a local aiohttp server: what it does not carry between requests."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from inference.gateway.settings import GatewaySettings
from inference.gateway.upstream import make_client

pytestmark = pytest.mark.integration


def test_upstream_cookies_are_not_replayed_to_other_requests():
    """One shared client serves every user: a cookie one upstream answer sets must not reach the next request.

    By host name: aiohttp's default jar already ignores cookies of IP-address hosts."""
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("session", "user-a-secret")
        return response

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "localhost", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        client = make_client(GatewaySettings())
        try:
            for _ in range(2):
                async with client.post(f"http://localhost:{port}/v1/chat/completions", json={}) as resp:
                    assert resp.status == 200
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(run())
    assert seen == [None, None]
