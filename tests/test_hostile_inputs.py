"""Hostile inputs that the safety layer used to answer badly (issue 13, items C, D and F):
a reply that tells whether a file exists outside the roots, multi-line argument errors
that echo huge values, silently ignored unknown arguments, IPv6 addresses that carry a
private IPv4 address, image sizes refused only after decoding, and malformed JSON-RPC
lines on both MCP transports."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import queue
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from pathlib import Path

import pytest
from loopback import free_port, wait_until_listening
from PIL import Image, ImageFile

from openseg_r import OpenSegR
from openseg_r._support.images import load_image
from openseg_r.errors import ImageError
from openseg_r.lmm import ScriptedLMM
from openseg_r.tools.safety import SafetyLimits, ToolInputError, fetch_image_url, is_public_address, read_image_path
from openseg_r.tools.service import SegmentationService, ToolBusyError

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", LANGSMITH_TRACING="false")
PYDANTIC_URL = "errors.pydantic.dev"


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """base/root holds the photo and symlinks; base/ holds a file the caller must not learn about."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    root.mkdir()
    shutil.copy(PHOTO, root / "voc.jpg")
    (base / "secret.png").write_bytes(PHOTO.read_bytes())
    (base / "outside-loop").symlink_to(base / "outside-loop")
    (root / "to-existing.jpg").symlink_to(base / "secret.png")
    (root / "to-missing.jpg").symlink_to(base / "nothing-here.png")
    (root / "to-outside-loop.jpg").symlink_to(base / "outside-loop")
    return root


@pytest.fixture(scope="module")
def limits(image_root):
    return SafetyLimits(allowed_roots=[image_root])


@pytest.fixture(scope="module")
def service(tiny_segmenter, limits):
    return SegmentationService(
        OpenSegR(segmenter=tiny_segmenter, lmm=ScriptedLMM(json.loads(SCRIPT.read_text()))), limits
    )


def refusal(path: str, limits: SafetyLimits) -> str:
    with pytest.raises(ToolInputError) as caught:
        read_image_path(path, limits)
    return str(caught.value)


# --------------------------------------------------------------------------- C: one message outside the roots


def test_outside_the_roots_missing_and_existing_files_get_the_same_message(image_root, limits):
    base = image_root.parent
    outside = [  # (a path that exists, a path that does not): the replies must not tell them apart
        (str(base / "secret.png"), str(base / "nothing-here.png")),
        (str(base / "secret.png"), str(base / "no-folder" / "x.png")),
        (str(base / "secret.png"), str(base / "secret.png" / "not-a-folder.png")),
        (str(base / "secret.png"), str(base / "outside-loop")),
        ("to-existing.jpg", "to-missing.jpg"),  # symlinks out of the root, to a file and to nothing
        ("to-existing.jpg", "to-outside-loop.jpg"),
        ("/etc/hostname", "/etc/no-such-file-anywhere"),
    ]
    assert "outside" not in refusal("~root/x.png", limits)  # '~name' is a file name, not another user's home
    for existing, missing in outside:
        said_existing, said_missing = refusal(existing, limits), refusal(missing, limits)
        assert "outside the allowed folders" in said_existing, said_existing
        assert said_existing == said_missing
    # inside the roots, a missing file may say so
    assert "no such image file: 'missing.jpg'" in refusal("missing.jpg", limits)


# --------------------------------------------------------------------------- D: one-line argument errors

VALID = {"image_path": "voc.jpg", "vocabulary": ["person", "chair"]}
ARGUMENT_CASES = [  # (arguments, a fragment the one line must name)
    ({**VALID, "vocabulary": 5}, "vocabulary"),
    ({**VALID, "vocabulary": {"cat": 1}}, "vocabulary"),
    ({**VALID, "vocabulary": [1, 2]}, "vocabulary"),
    ({**VALID, "reasoning": "maybe"}, "reasoning"),
    ({**VALID, "self_check": [1] * 1000}, "self_check"),
    ({**VALID, "reasoning": "y" * 100_000}, "reasoning"),
    ({**VALID, "image_path": ["voc.jpg"]}, "image_path"),
    ({**VALID, "image_path": "x" * 100_000}, "image file"),
    ({**VALID, "image_path": "/" + "d/" * 50_000 + "x.png"}, "outside the allowed folders"),
    ({**VALID, "masks": "gif"}, "masks"),
    ({**VALID, "evil": 1}, "evil"),
    ({**VALID, "e" * 100_000: 1}, "unknown argument"),
    ({"vocabulary": ["cat"]}, "exactly one"),
]


def assert_one_short_line(message: str, fragment: str) -> None:
    assert "\n" not in message and PYDANTIC_URL not in message, message
    assert len(message) < 200, (len(message), message[:300])
    assert fragment in message, message


@pytest.mark.parametrize("arguments, fragment", ARGUMENT_CASES, ids=range(len(ARGUMENT_CASES)))
def test_argument_errors_from_the_service_are_one_short_line(service, arguments, fragment):
    with pytest.raises(ToolInputError) as caught:
        service.segment(arguments)
    assert_one_short_line(str(caught.value), fragment)


def test_argument_errors_from_the_mcp_server_are_one_short_line(http_server):
    """Through the official client: the SDK's own argument validation included."""
    from mcp import Client

    other_tools = [
        ("explain", {"trace_id": 5}, "trace_id"),
        ("explain", {"trace_id": "x" * 100_000}, "trace_id"),
        ("explain", {"trace_id": "abc", "evil": 1}, "evil"),
        ("explain", {}, "trace_id"),
        ("list_vocabularies", {"evil": 1}, "evil"),
        ("t" * 100_000, {}, "Unknown tool"),
    ]

    async def main():
        async with Client(http_server[0]) as client:
            for tool, arguments, fragment in [("segment", a, f) for a, f in ARGUMENT_CASES] + other_tools:
                result = await client.call_tool(tool, arguments)
                assert result.is_error, (tool, list(arguments)[:3])
                assert_one_short_line(result.content[0].text, fragment)
            assert not (await client.call_tool("list_vocabularies", {})).is_error

    asyncio.run(main())


def test_busy_message_says_the_slots_stayed_in_use(tiny_segmenter, limits):
    started, release = threading.Event(), threading.Event()

    class HeldLMM(ScriptedLMM):
        def complete(self, request, feedback=None):
            started.set()
            release.wait(60)
            return super().complete(request, feedback)

    held = SegmentationService(
        OpenSegR(segmenter=tiny_segmenter, lmm=HeldLMM(json.loads(SCRIPT.read_text()))),
        limits.model_copy(update={"max_concurrent": 1, "queue_timeout_s": 0.2}),
    )
    first = threading.Thread(target=held.segment, args=(dict(VALID),))
    first.start()
    try:
        assert started.wait(60)
        with pytest.raises(ToolBusyError) as caught:
            held.segment(dict(VALID))
    finally:
        release.set()
        first.join(60)
    message = str(caught.value)
    assert message == ("the server is busy: all 1 segmentation slot(s) stayed in use for 0.2 s; try again later")


# --------------------------------------------------------------------------- F1: IPv4 inside IPv6


@pytest.mark.parametrize(
    "address, public",
    [
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2002:c0a8:101::", False),  # 6to4 of 192.168.1.1
        ("2002:a9fe:a9fe::", False),  # 6to4 of 169.254.169.254 (cloud metadata)
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("2001:0:808:808::f5f7:fefe", False),  # Teredo, client 10.8.1.1 (stored XOR 0xffffffff)
        ("2001:0:a00:1::f7f7:f7f7", False),  # Teredo, server 10.0.0.1
        ("2001:0:808:808::f7f7:f7f7", True),  # Teredo, server 8.8.8.8, client 8.8.8.8
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("64:ff9b:1::808:808", False),  # local-use NAT64: refused whatever it carries
        ("::ffff:10.0.0.1", False),  # IPv4-mapped
        ("::ffff:8.8.8.8", True),
        ("::127.0.0.1", False),  # IPv4-compatible (deprecated)
        ("::8.8.8.8", False),
        ("::ffff:0:7f00:1", False),  # IPv4-translated
        ("2606:4700:4700::1111", True),
    ],
)
def test_ipv6_that_carries_a_private_ipv4_is_not_public(address, public):
    assert is_public_address(address) is public


def test_a_6to4_url_to_loopback_is_refused_before_connecting():
    with pytest.raises(ToolInputError, match="non-public address"):
        fetch_image_url("http://[2002:7f00:1::]:9/x.png", SafetyLimits(allow_urls=True))


# --------------------------------------------------------------------------- F2: sizes from the header


def strip_png(width: int, height: int) -> bytes:
    """A real, valid grayscale PNG, compressed row by row (never 25 MB in memory at once)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row, body = zlib.compressobj(9), b"\x00" * (width + 1), []
    rows_per_block = max(1, 1_000_000 // len(row))
    for start in range(0, height, rows_per_block):
        body.append(compressor.compress(row * min(rows_per_block, height - start)))
    body.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", b"".join(body))
        + chunk(b"IEND", b"")
    )


def test_a_long_strip_is_refused_from_its_header_without_decoding(monkeypatch, service):
    data, tall = strip_png(3_125_000, 8), strip_png(8, 3_125_000)
    assert len(data) < 40_000 and Image.open(io.BytesIO(data)).size == (3_125_000, 8)
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original(self))
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="3125000x8: its long side is more than 100 times"):
            load_image(data, max_pixels=25_000_000)  # exactly at the pixel limit: the aspect ratio refuses it
        with pytest.raises(ImageError, match="8x3125000"):
            load_image(tall, max_pixels=25_000_000)
        with pytest.raises(ToolInputError, match="long side"):
            service.segment({"image_base64": base64.b64encode(data).decode(), "vocabulary": ["cat"]})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded == [] and peak < 50_000_000, (decoded, peak)
    assert load_image(strip_png(800, 8)).shape == (8, 800, 3)  # 100:1 is still allowed, and decoded


# --------------------------------------------------------------------------- F4: malformed JSON-RPC lines

LONE_SURROGATE = '{"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"x": "\\ud800"}}'
DEEP_NESTING = '{"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"


def serve_args(tiny_model_files, image_root, *extra) -> list[str]:
    config, weights = tiny_model_files
    return [
        sys.executable,
        "-m",
        "openseg_r.cli",
        "serve",
        "mcp",
        "--clip-model",
        str(config),
        "--clip-pretrained",
        str(weights),
        "--lmm",
        f"scripted:{SCRIPT}",
        "--cache",
        "none",
        "--root",
        str(image_root),
        *extra,
    ]


@pytest.fixture(scope="module")
def http_server(tiny_model_files, image_root):
    port = free_port()
    process = subprocess.Popen(
        serve_args(tiny_model_files, image_root, "--http", "--port", str(port)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_listening(process, port)
    yield f"http://127.0.0.1:{port}/mcp", process
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.parametrize("body", [LONE_SURROGATE, DEEP_NESTING], ids=["lone-surrogate", "deep-nesting"])
def test_http_answers_400_to_a_line_it_cannot_parse(http_server, body):
    import httpx

    url, process = http_server
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    response = httpx.post(url, content=body.encode(), headers=headers, timeout=60)
    assert response.status_code == 400, (response.status_code, response.text[:200])
    assert process.poll() is None


def test_stdio_does_not_answer_a_line_it_cannot_parse_but_keeps_serving(tiny_model_files, image_root):
    """The SDK's stdio transport drops such a line without a reply (the client would wait
    for its own time-out); the server stays up and answers the next request, in order."""
    process = subprocess.Popen(
        serve_args(tiny_model_files, image_root),
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
    )
    replies: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [replies.put(json.loads(line)) for line in process.stdout], daemon=True).start()

    def send(message) -> None:
        process.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        process.stdin.flush()

    try:
        send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "hostile", "version": "0"},
                },
            }
        )
        assert replies.get(timeout=120)["id"] == 1
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for bad_line, next_id in ((LONE_SURROGATE, 2), (DEEP_NESTING, 3)):
            send(bad_line)
            send({"jsonrpc": "2.0", "id": next_id, "method": "ping"})
            reply = replies.get(timeout=60)
            assert reply["id"] == next_id and "result" in reply, reply  # nothing came for the bad line (id 7)
        assert process.poll() is None
    finally:
        process.stdin.close()
        process.terminate()
        process.wait(timeout=30)


def test_a_file_that_is_not_an_image_is_named_as_what_was_sent(service, image_root):
    """It ended "...a format PIL cannot read: the image"; it names the argument now."""
    import base64

    (image_root / "notes.jpg").write_text("just some text, not a picture\n")
    with pytest.raises(ToolInputError) as by_path:
        service.segment({**VALID, "image_path": str(image_root / "notes.jpg")})
    assert str(by_path.value) == "the file at image_path is not an image file, or is in a format PIL cannot read"
    with pytest.raises(ToolInputError) as by_bytes:
        service.segment({"vocabulary": ["cat"], "image_base64": base64.b64encode(b"plain text").decode()})
    assert str(by_bytes.value) == "image_base64 is not an image file, or is in a format PIL cannot read"
