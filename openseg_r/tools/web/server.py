"""``openseg-r serve web``: the page (Gradio, mounted on FastAPI) plus one route of our own,
the HTML report of a recorded run, served by uvicorn until a signal stops it."""

from __future__ import annotations

import os
import re

from openseg_r.tools.web.app import PAGE_CSS, WebApp, build_blocks
from openseg_r.tools.web.guard import UploadGuard

REPORT_ROUTE = "/openseg/report/{run_id}"
RUN_ID_OR_PREFIX = re.compile(r"^[0-9a-f]{4,32}$")  # a unique prefix of 4 or more is enough, as for `runs show`
UPLOAD_HEADROOM = 2  # Gradio refuses uploads over twice the file limit; ours says the size of those under it
GRADIO_QUIET = {  # no calls home, no telemetry: the page must work on a machine without network
    "GRADIO_ANALYTICS_ENABLED": "False",
    "GRADIO_TELEMETRY_ENABLED": "False",
    "DISABLE_TELEMETRY": "1",
}


def create_app(web: WebApp):
    """The ASGI app: our report route first, then the page at the root."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, PlainTextResponse

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get(REPORT_ROUTE)
    def report(run_id: str):
        if web.runs_db is None:
            return PlainTextResponse("this server does not record runs\n", status_code=404)
        if not RUN_ID_OR_PREFIX.match(run_id):  # the whole id, or the short one the page shows
            return PlainTextResponse("not a run id\n", status_code=404)
        from openseg_r.errors import OpenSegRError
        from openseg_r.runs.inspect import load_run
        from openseg_r.runs.report import render_report

        try:
            run = load_run(web.runs_db, run_id, web.backends.model.graph)
        except OpenSegRError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=404)
        return HTMLResponse(render_report(run))

    blocks = build_blocks(web)
    app = gr.mount_gradio_app(
        app,
        blocks,
        path="",
        allowed_paths=[str(web.downloads)],
        footer_links=["gradio"],
        max_file_size=UPLOAD_HEADROOM * web.service.limits.max_file_bytes,
        css=PAGE_CSS,
        show_error=False,
        ssr_mode=False,
        mcp_server=False,
    )
    # Outermost: a file an event names is checked before Gradio would copy it (web/guard.py).
    app.add_middleware(UploadGuard, upload_folder=web.upload_folder, max_file_bytes=web.service.limits.max_file_bytes)
    return app


def serve_web(web: WebApp, listening, on_ready=None) -> int | None:
    """Serve on ``listening`` (the socket :func:`listen` bound) until SIGINT (130) or SIGTERM (0);
    work in flight is cancelled, as in ``serve mcp``."""
    import anyio
    import uvicorn

    from openseg_r.tools.lifecycle import STOP_GRACE_S, StopOnSignal

    for name, value in GRADIO_QUIET.items():
        os.environ.setdefault(name, value)
    app = create_app(web)
    stop = StopOnSignal(web.service)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            stop.notice(sig)
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if on_ready is not None and self.started:
                on_ready()

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=STOP_GRACE_S / 2)
    server = Server(config)
    with stop.installed():
        try:
            anyio.run(lambda: server.serve(sockets=[listening]))
        except KeyboardInterrupt:
            if stop.signal is None:
                raise
    if stop.signal is None:
        return None if server.started else 1
    stop.farewell()
    return stop.exit_code


def listen(host: str, port: int):
    """The server's socket, bound (a port in use is one line) but not yet listening: until the
    page is served, a connection is refused rather than left waiting while the model loads
    (the server listens on it when it starts)."""
    import socket

    from openseg_r.errors import ConfigError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock
