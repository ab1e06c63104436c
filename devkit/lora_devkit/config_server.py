"""A small HTTP server on 127.0.0.1 that serves model config.json files well and badly: what the
operator's model-config fetch is tested and benchmarked against (a real socket, a real client).

    with ConfigServer({"/llama/config.json": body}) as server:
        server.url("/llama/config.json")   # 200 with the body
        server.url("/trickle/config.json") # 200, then one byte every `trickle_seconds`, forever
        server.url("/redirect?to=http://elsewhere/")  # 302 to `to`
        server.url("/chunked/llama/config.json")  # the file at /llama/..., without a length

Runs aiohttp in a background thread, so synchronous tests, async tests and the operator (another
process) can all reach it. `requests` lists the paths asked for, in order.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import aiohttp.web

from .service import Service

TRICKLE_PREFIX = "/trickle/"
CHUNKED_PREFIX = "/chunked/"


class ConfigServer(Service):
    def __init__(self, files: dict[str, bytes] | None = None, trickle_seconds: float = 0.5):
        self.files = dict(files or {})
        self.trickle_seconds = trickle_seconds
        self.port = 0
        self.requests: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ConfigServer:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the config server did not start within 15 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = aiohttp.web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        runner = aiohttp.web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        await aiohttp.web.SockSite(runner, sock).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self.requests.append(request.path_qs)
        if request.path.startswith(TRICKLE_PREFIX):
            return await self._trickle(request)
        if request.path == "/redirect":
            raise aiohttp.web.HTTPFound(request.query.get("to", "/"))
        chunked = request.path.startswith(CHUNKED_PREFIX)
        body = self.files.get(
            request.path.removeprefix(CHUNKED_PREFIX[:-1]) if chunked else request.path
        )
        if body is None:
            raise aiohttp.web.HTTPNotFound()
        if not chunked:
            return aiohttp.web.Response(body=body, content_type="application/json")
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 1024):
            await response.write(body[start : start + 1024])
        await response.write_eof()
        return response

    async def _trickle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        """Headers at once, then a byte of an endless JSON string every `trickle_seconds`."""
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"model_type": "')
        try:
            while True:
                await asyncio.sleep(self.trickle_seconds)
                await response.write(b"x")
        except ConnectionError:
            pass  # the client gave up
        return response
