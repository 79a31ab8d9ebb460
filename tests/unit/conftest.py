"""Fixtures of the unit tests: a real TLS server that answers like the API server's /version (``tls.py``)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from .tls import Pki


@pytest.fixture
async def apiserver(tmp_path):
    """An HTTPS server answering like the API server's /version, echoing what it saw of the client."""
    pki = Pki(tmp_path)
    seen: list[dict[str, Any]] = []

    async def version(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(item[0] for item in (peer or {}).get("subject", ()))
        seen.append({"client": subject.get("commonName"), "authorization": request.headers.get("Authorization"),
                     "user_agent": request.headers.get("User-Agent")})
        return web.json_response({"gitVersion": "v1.36.0"})

    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=pki.server_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield pki, f"https://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()
