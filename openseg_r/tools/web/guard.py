"""The gate in front of Gradio's event routes: a file the client names must be an upload.

Gradio copies every file path an event names into its cache *before* any function of ours
runs, and it checks where that path lies only once ``launch()`` has run, which a page
mounted on FastAPI never does. So a client could name ``/etc/passwd``, a secret image,
``/dev/zero`` (read forever) or a FIFO (blocks every request), and Gradio would open it.

:class:`UploadGuard` reads the body of every call to an event route first and refuses, in
one line and before Gradio sees the request, any file reference (``{"path": ...}``) that is
not a regular file inside Gradio's upload folder, within the size limit. It only looks
(``lstat``/``stat``, never ``open``), so nothing is read, copied or left behind, and
every refusal says the same thing whether or not the named file exists.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

GONE = "the uploaded file is gone; upload it again"
UPLOAD_ROUTE_SUFFIX = "/gradio_api/upload"
EVENT_ROUTE_MARK = "/gradio_api/"
BODY_HEADROOM = 1_000_000  # bytes a request may hold beyond a base64 image at the file limit


class UploadRefused(ValueError):
    """A file reference that is not one of this server's uploads (its message is one line)."""


def check_upload_path(value: object, upload_folder: str | Path, max_bytes: int) -> Path:
    """``value`` as the regular file inside ``upload_folder`` it names, or :class:`UploadRefused`.
    Never opens the file."""
    if not isinstance(value, str) or not value or "\x00" in value or "://" in value:
        raise UploadRefused(GONE)
    folder = os.path.realpath(upload_folder)
    real = os.path.realpath(value)
    if os.path.commonpath([folder, real]) != folder or real == folder:
        raise UploadRefused(GONE)
    try:
        info = os.stat(real)
    except (OSError, ValueError):
        raise UploadRefused(GONE) from None
    if not stat.S_ISREG(info.st_mode):
        raise UploadRefused(GONE)
    if info.st_size > max_bytes:
        raise UploadRefused(f"the image file is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
    return Path(real)


def read_upload(value: object, upload_folder: str | Path, max_bytes: int) -> tuple[bytes, str]:
    """The bytes and name of the upload ``value`` names (checked as above). Opened without
    following a link and without blocking, and read only if it is still a regular file then,
    so a file swapped after the check cannot make this read a FIFO or a device."""
    path = check_upload_path(value, upload_folder, max_bytes)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise UploadRefused(GONE) from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise UploadRefused(GONE)
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadRefused(f"the image file is over the limit of {max_bytes:,} bytes")
    return data, path.name


def file_references(data: object) -> list[object]:
    """Every ``path`` of a dict in ``data`` (Gradio's FileData, however it is marked); a
    null path names no file (a pasted image comes as a ``data:`` URL)."""
    found: list[object] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("path") is not None:
                found.append(item["path"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


class UploadGuard:
    """ASGI middleware: checks the file references of every POST to an event route (Gradio's
    upload route itself excepted) before the app sees the request."""

    def __init__(self, app, upload_folder: str | Path, max_file_bytes: int) -> None:
        self.app = app
        self.upload_folder = str(upload_folder)
        self.max_file_bytes = max_file_bytes
        self.max_body = max_file_bytes * 4 // 3 + BODY_HEADROOM  # a pasted image travels as base64

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or EVENT_ROUTE_MARK not in path
            or path.endswith(UPLOAD_ROUTE_SUFFIX)
        ):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _refuse(send, 413, f"the request is over {self.max_body:,} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError:
            data = None  # not JSON: Gradio refuses it itself, and it names no file
        try:
            for value in file_references(data):
                check_upload_path(value, self.upload_folder, self.max_file_bytes)
        except UploadRefused as exc:
            await _refuse(send, 400, str(exc))
            return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send, status: int, line: str) -> None:
    payload = json.dumps({"error": line}).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
