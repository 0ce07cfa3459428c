"""openseg-r as agents call it: the LangChain tool in a LangGraph agent loop, the MCP
server through the official client (stdio and streamable HTTP), the LangGraph dev
server, and hostile arguments against all of them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from loopback import free_port, wait_until_listening
from PIL import Image

from openseg_r import OpenSegR
from openseg_r.lmm import ScriptedLMM
from openseg_r.tools.safety import (
    SafetyLimits,
    ToolInputError,
    checked_vocabulary,
    decode_base64_image,
    fetch_image_url,
    is_public_address,
    read_image_path,
)
from openseg_r.tools.service import SegmentationService, ToolBusyError

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", LANGSMITH_TRACING="false")


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG file whose header claims 10 gigapixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """A root folder with the photo, a symlink that escapes it, a folder and a bomb."""
    base = tmp_path_factory.mktemp("agents")
    root = base / "root"
    root.mkdir()
    shutil.copy(PHOTO, root / "voc.jpg")
    (base / "secret.png").write_bytes(PHOTO.read_bytes())
    (root / "escape.jpg").symlink_to(base / "secret.png")
    (root / "inside-link.jpg").symlink_to(root / "voc.jpg")
    (root / "folder").mkdir()
    (root / "bomb.png").write_bytes(bomb_png())
    return root


@pytest.fixture(scope="module")
def limits(image_root):
    return SafetyLimits(allowed_roots=[image_root], max_concurrent=2, queue_timeout_s=30)


@pytest.fixture(scope="module")
def service(tiny_segmenter, limits):
    return SegmentationService(
        OpenSegR(segmenter=tiny_segmenter, lmm=ScriptedLMM(json.loads(SCRIPT.read_text()))), limits
    )


# --------------------------------------------------------------------------- safety rules


@pytest.mark.parametrize(
    "path, message",
    [
        ("../secret.png", "must not contain '..'"),
        ("folder/../../secret.png", "must not contain '..'"),
        ("escape.jpg", "outside the allowed folders"),  # a symlink out of the root
        ("/etc/hostname", "outside the allowed folders"),
        ("/dev/zero", "outside the allowed folders"),
        ("folder", "not a regular file"),
        ("missing.jpg", "no such image file"),
        ("", "empty"),
        ("voc\x00.jpg", "NUL"),
    ],
)
def test_paths_outside_the_roots_are_refused(image_root, limits, path, message):
    with pytest.raises(ToolInputError, match=message):
        read_image_path(path, limits)


def test_paths_inside_the_roots_are_read(image_root, limits):
    assert read_image_path("voc.jpg", limits) == PHOTO.read_bytes()
    assert read_image_path("inside-link.jpg", limits) == PHOTO.read_bytes()
    assert read_image_path(str(image_root / "voc.jpg"), limits) == PHOTO.read_bytes()


def test_device_files_are_refused_even_under_a_root():
    with pytest.raises(ToolInputError, match="not a regular file"):
        read_image_path("/dev/zero", SafetyLimits(allowed_roots=["/dev"]))


def test_no_roots_means_no_file_access():
    with pytest.raises(ToolInputError, match="disabled"):
        read_image_path(str(PHOTO), SafetyLimits())


def test_base64_size_is_checked_before_decoding():
    huge = "A" * 50_000_000  # 50 MB of base64
    started = time.perf_counter()
    with pytest.raises(ToolInputError, match="over the limit"):
        decode_base64_image(huge, SafetyLimits())
    assert time.perf_counter() - started < 0.5
    with pytest.raises(ToolInputError, match="not valid base64"):
        decode_base64_image("not base64 at all!", SafetyLimits())
    data = base64.b64encode(b"\x89PNG").decode()
    assert decode_base64_image(f"data:image/png;base64,{data}", SafetyLimits()) == b"\x89PNG"


@pytest.mark.parametrize(
    "url, limits, message",
    [
        ("http://example.com/a.png", SafetyLimits(), "disabled"),
        ("http://127.0.0.1:9/a.png", SafetyLimits(allow_urls=True), "non-public address"),
        ("http://localhost/a.png", SafetyLimits(allow_urls=True), "non-public address"),
        ("http://[::1]/a.png", SafetyLimits(allow_urls=True), "non-public address"),
        ("http://169.254.169.254/latest/meta-data", SafetyLimits(allow_urls=True), "non-public address"),
        ("http://10.0.0.8/a.png", SafetyLimits(allow_urls=True), "non-public address"),
        ("file:///etc/passwd", SafetyLimits(allow_urls=True), "only http and https"),
        ("ftp://example.com/a.png", SafetyLimits(allow_urls=True), "only http and https"),
        ("http://[not-an-ip/a.png", SafetyLimits(allow_urls=True), "malformed"),
    ],
)
def test_urls_are_refused_unless_enabled_and_public(url, limits, message):
    with pytest.raises(ToolInputError, match=message):
        fetch_image_url(url, limits)


def test_a_real_loopback_server_is_never_fetched():
    """A live HTTP server on 127.0.0.1 that would serve the photo: refused before connecting."""
    import http.server
    import threading

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PHOTO.read_bytes())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ToolInputError, match="non-public"):
            fetch_image_url(f"http://127.0.0.1:{server.server_port}/voc.jpg", SafetyLimits(allow_urls=True))
        assert hits == []
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "address, public",
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.1.1", False),
        ("172.16.0.1", False),
        ("169.254.1.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("100.64.0.1", False),
        ("not an ip", False),
    ],
)
def test_public_address_rule(address, public):
    assert is_public_address(address) is public


def test_vocabulary_caps():
    limits = SafetyLimits()
    with pytest.raises(ToolInputError, match="100,000 classes"):
        checked_vocabulary([f"class {i}" for i in range(100_000)], limits)
    with pytest.raises(ToolInputError, match="over the limit of 100"):
        checked_vocabulary(["x" * 101], limits)
    with pytest.raises(ToolInputError, match="far over"):
        checked_vocabulary("a," * 200_000, limits)
    assert len(checked_vocabulary("ade150", limits).classes) == 150
    # a string is a built-in name or a list of names, never a file to read
    assert checked_vocabulary(str(SCRIPT), limits).names == [str(SCRIPT)]


# --------------------------------------------------------------------------- the service


def test_service_refuses_hostile_input_then_still_works(service):
    hostile = [
        ({"image_path": "../secret.png", "vocabulary": ["cat"]}, "'..'"),
        ({"image_path": "escape.jpg", "vocabulary": ["cat"]}, "outside"),
        ({"image_path": "/dev/zero", "vocabulary": ["cat"]}, "outside"),
        ({"image_path": "bomb.png", "vocabulary": ["cat"]}, "too large to decode"),
        ({"image_base64": "A" * 50_000_000, "vocabulary": ["cat"]}, "over the limit"),
        ({"image_path": "voc.jpg", "vocabulary": [f"c{i}" for i in range(100_000)]}, "100,000 classes"),
        ({"image_url": "http://127.0.0.1/x.png", "vocabulary": ["cat"]}, "disabled"),
        ({"vocabulary": ["cat"]}, "exactly one"),
        ({"image_path": "voc.jpg", "image_base64": "AAAA", "vocabulary": ["cat"]}, "exactly one"),
        ({"image_path": "voc.jpg", "vocabulary": []}, "empty"),
        ({"image_base64": base64.b64encode(b"not an image").decode(), "vocabulary": ["cat"]}, "not an image"),
    ]
    for arguments, message in hostile:
        with pytest.raises(ToolInputError, match=message):
            service.segment(arguments)
    output, overlay = service.segment({"image_path": "voc.jpg", "vocabulary": ["person", "chair", "table"]})
    assert output.classes and Image.open(__import__("io").BytesIO(base64.b64decode(overlay))).format == "PNG"


def test_service_output_masks_match_the_label_map(service):
    from pycocotools import mask as coco_mask

    output, _ = service.segment({"image_path": "voc.jpg", "vocabulary": "voc21"})
    trace = service.explain(output.trace_id)
    assert trace["reasoning"]["image"]["description"].startswith("People eating")
    total = 0
    for found in output.classes:
        rle = output.masks[found.name]
        decoded = coco_mask.decode({"size": rle.size, "counts": rle.counts.encode()})
        assert decoded.shape == (output.height, output.width) and int(decoded.sum()) == found.pixels
        total += found.pixels
    assert total == output.width * output.height
    assert "person" in output.summary and output.trace_id in output.summary
    png, _ = service.segment({"image_path": "voc.jpg", "vocabulary": "voc21", "masks": "png"})
    labels = np.asarray(Image.open(__import__("io").BytesIO(base64.b64decode(png.label_map_png))))
    assert png.masks is None and labels.shape == (output.height, output.width)
    assert {png.label_names[v] for v in np.unique(labels)} == {c.name for c in png.classes}
    with pytest.raises(ToolInputError, match="no trace"):
        service.explain("does-not-exist")


def test_busy_server_refuses_with_a_clear_message(tiny_segmenter, limits):
    class SlowLMM(ScriptedLMM):
        def complete(self, request, feedback=None):
            time.sleep(1.0)
            return super().complete(request, feedback)

    slow = SegmentationService(
        OpenSegR(segmenter=tiny_segmenter, lmm=SlowLMM(json.loads(SCRIPT.read_text()))),
        limits.model_copy(update={"max_concurrent": 1, "queue_timeout_s": 0.1, "call_timeout_s": 0.3}),
    )
    request = {"image_path": "voc.jpg", "vocabulary": ["person", "chair"]}
    with pytest.raises(ToolInputError, match="longer than the limit of 0.3 s"):
        slow.segment(request)
    with pytest.raises(ToolBusyError, match="busy"):  # the abandoned call still holds the only slot
        slow.segment(request)
    time.sleep(2.5)
    slow.limits.call_timeout_s = 60
    output, _ = slow.segment(request)  # the slot was freed when the abandoned work ended
    assert output.classes


# --------------------------------------------------------------------------- LangChain


def test_langchain_agent_loop_drives_the_tool(service):
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    from openseg_r.tools.langchain_tool import TOOL_NAME, segment_tool

    tool = segment_tool(service)
    model = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {
                            "name": TOOL_NAME,
                            "id": "call-1",
                            "args": {"image_path": "voc.jpg", "vocabulary": ["person", "chair", "table"]},
                        }
                    ],
                ),
                AIMessage(
                    content="",
                    tool_calls=[
                        {
                            "name": TOOL_NAME,
                            "id": "call-2",
                            "args": {"image_path": "../secret.png", "vocabulary": ["cat"]},
                        }
                    ],
                ),
                AIMessage(content="There are people at a table."),
            ]
        )
    )
    builder = StateGraph(MessagesState)
    builder.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    builder.add_node("tools", ToolNode([tool]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    messages = builder.compile().invoke({"messages": [HumanMessage("What is in voc.jpg?")]})["messages"]
    first, second = [m for m in messages if m.type == "tool"]
    assert first.status == "success" and [block["type"] for block in first.content] == ["text", "image"]
    assert first.content[0]["text"].startswith("Segmented a 500x375 image")
    assert first.artifact["trace_id"] and set(first.artifact["masks"]) == {c["name"] for c in first.artifact["classes"]}
    assert second.status == "error" and "'..'" in second.content
    assert messages[-1].content == "There are people at a table."
    assert "when" in tool.description.lower() and "returns" in tool.description.lower()


def test_langchain_tool_async_variant(service):
    from openseg_r.tools.langchain_tool import segment_tool

    tool = segment_tool(service)
    call = {
        "type": "tool_call",
        "name": tool.name,
        "id": "a1",
        "args": {"image_base64": base64.b64encode(PHOTO.read_bytes()).decode(), "vocabulary": "voc21", "masks": "none"},
    }
    message = asyncio.run(tool.ainvoke(call))
    assert message.artifact["masks"] is None and message.artifact["classes"]
    bad = asyncio.run(tool.ainvoke({**call, "args": {"vocabulary": "voc21"}}))
    assert bad.status == "error" and "exactly one" in bad.content


# --------------------------------------------------------------------------- MCP


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
        serve_args(
            tiny_model_files,
            image_root,
            "--http",
            "--port",
            str(port),
            "--max-concurrent",
            "2",
            "--queue-timeout",
            "60",
        ),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_listening(process, port)
    yield f"http://127.0.0.1:{port}/mcp", process
    process.terminate()
    process.wait(timeout=30)


async def _exercise(client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"segment", "list_vocabularies", "explain"}
    assert tools["segment"].output_schema["properties"]["masks"]
    assert "vocabulary" in tools["segment"].input_schema["required"]
    result = await client.call_tool("segment", {"image_path": "voc.jpg", "vocabulary": "voc21"})
    assert not result.is_error
    text, image = result.content
    assert text.type == "text" and text.text.startswith("Segmented a 500x375 image")
    assert image.type == "image" and image.mime_type == "image/png"
    assert Image.open(__import__("io").BytesIO(base64.b64decode(image.data))).size[1] == 375
    structured = result.structured_content
    assert structured["width"] == 500 and set(structured["masks"]) == {c["name"] for c in structured["classes"]}
    explained = await client.call_tool("explain", {"trace_id": structured["trace_id"]})
    assert not explained.is_error and explained.structured_content["reasoning"]["alignment"]["present"]
    vocabularies = await client.call_tool("list_vocabularies", {})
    assert {"voc21", "ade150"} <= {v["name"] for v in vocabularies.structured_content["vocabularies"]}


def test_mcp_over_stdio_with_the_official_client(tiny_model_files, image_root):
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=serve_args(tiny_model_files, image_root)[1:],
        env={k: v for k, v in ENV.items() if isinstance(v, str)},
    )

    async def main():
        async with Client(params) as client:
            await _exercise(client)
            refused = await client.call_tool("segment", {"image_path": "escape.jpg", "vocabulary": ["cat"]})
            assert refused.is_error and "outside the allowed folders" in refused.content[0].text

    asyncio.run(main())


def test_mcp_over_streamable_http_with_the_official_client(http_server):
    from mcp import Client

    async def main():
        async with Client(http_server[0]) as client:
            await _exercise(client)

    asyncio.run(main())


def test_mcp_hostile_arguments_are_refused_and_the_server_keeps_running(http_server, image_root):
    import httpx
    from mcp import Client

    url, process = http_server
    hostile = [
        ({"image_path": "../secret.png", "vocabulary": ["cat"]}, "'..'"),
        ({"image_path": "escape.jpg", "vocabulary": ["cat"]}, "outside the allowed folders"),
        ({"image_path": "/dev/zero", "vocabulary": ["cat"]}, "outside the allowed folders"),
        ({"image_path": "bomb.png", "vocabulary": ["cat"]}, "pixels"),
        ({"image_base64": "A" * 50_000_000, "vocabulary": ["cat"]}, "over the limit"),
        ({"image_path": "voc.jpg", "vocabulary": [f"c{i}" for i in range(100_000)]}, "100,000 classes"),
        ({"image_url": "http://127.0.0.1:1/x.png", "vocabulary": ["cat"]}, "disabled"),
        ({"image_path": "voc.jpg"}, "vocabulary"),
        ({"image_path": 42, "vocabulary": ["cat"]}, "image_path"),
    ]

    async def main():
        async with Client(url) as client:
            for arguments, message in hostile:
                try:
                    result = await client.call_tool("segment", arguments)
                except Exception as exc:
                    raise AssertionError(f"{list(arguments)}: {exc!r} {getattr(exc, 'data', None)}") from None
                assert result.is_error, arguments.keys()
                assert message in result.content[0].text, (message, result.content[0].text[:300])
            unknown = await client.call_tool("explain", {"trace_id": "nope"})
            assert unknown.is_error and "no trace" in unknown.content[0].text

    asyncio.run(main())
    # malformed JSON-RPC straight to the endpoint
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for body in (b"{not json", b'{"jsonrpc": "2.0", "method": 5}', b"[]", b"{" + b" " * 70_000_000 + b"}"):
        response = httpx.post(url, content=body, headers=headers, timeout=60)
        assert 400 <= response.status_code < 500  # 413 for the body over --max-request-bytes
    assert process.poll() is None

    async def still_works():
        async with Client(url) as client:
            result = await client.call_tool("segment", {"image_path": "voc.jpg", "vocabulary": ["person", "chair"]})
            assert not result.is_error

    asyncio.run(still_works())


def test_mcp_ten_concurrent_calls_at_a_limit_of_two(http_server):
    from mcp import Client

    url, process = http_server

    async def one(index: int):
        async with Client(url) as client:
            return await client.call_tool(
                "segment", {"image_path": "voc.jpg", "vocabulary": ["person", "chair", "table"], "masks": "none"}
            )

    async def main():
        return await asyncio.gather(*(one(i) for i in range(10)))

    results = asyncio.run(main())
    # the documented policy: calls beyond the limit wait in a queue (up to --queue-timeout), else are refused as busy
    for result in results:
        assert not result.is_error or "busy" in result.content[0].text
    assert sum(not r.is_error for r in results) >= 2 and process.poll() is None
    assert len({r.structured_content["trace_id"] for r in results if not r.is_error}) == sum(
        not r.is_error for r in results
    )


def test_serve_refuses_a_bad_safety_config(tmp_path, tiny_model_files, image_root):
    bad = tmp_path / "safety.toml"
    bad.write_text("[safety]\nmax_concurrent = 0\n")
    proc = subprocess.run(
        serve_args(tiny_model_files, image_root, "--safety-config", bad),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "max_concurrent" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- LangGraph server


def test_langgraph_dev_serves_the_graph(tiny_model_files, image_root, tmp_path):
    pytest.importorskip("langgraph_api", reason="pip install 'langgraph-cli[inmem]'")
    from langgraph_sdk import get_sync_client

    config, weights = tiny_model_files
    settings = tmp_path / "config.toml"
    settings.write_text(f'[safety]\nallowed_roots = ["{image_root}"]\n')
    port = free_port()
    env = dict(
        ENV,
        OPENSEG_R_CONFIG=str(settings),
        OPENSEG_R_CLIP_MODEL=str(config),
        OPENSEG_R_CLIP_PRETRAINED=str(weights),
        OPENSEG_R_LMM=f"scripted:{SCRIPT}",
    )
    # `langgraph dev` keeps its state in .langgraph_api/ under its working directory, and
    # resolves the graph's file from there: run it in tmp_path, with the repository's
    # langgraph.json pointing at the repository (issue 13: the tests rewrote committed pickles).
    work = tmp_path / "langgraph"
    work.mkdir()
    manifest = json.loads((ROOT / "langgraph.json").read_text())
    manifest["graphs"] = {name: str(ROOT / spec) for name, spec in manifest["graphs"].items()}
    manifest["dependencies"] = [str(ROOT / dependency) for dependency in manifest["dependencies"]]
    (work / "langgraph.json").write_text(json.dumps(manifest))
    root_before = _repository_root_state()
    langgraph = Path(sys.executable).with_name("langgraph")
    process = subprocess.Popen(
        [
            str(langgraph),
            "dev",
            "--no-browser",
            "--no-reload",
            "--port",
            str(port),
            "--config",
            str(work / "langgraph.json"),
        ],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = get_sync_client(url=f"http://127.0.0.1:{port}")
        deadline = time.time() + 120
        while True:
            try:
                assistants = client.assistants.search()
                break
            except Exception:
                if time.time() > deadline or process.poll() is not None:
                    raise
                time.sleep(1)
        assert [a["graph_id"] for a in assistants] == ["openseg-r"]
        thread = client.threads.create()
        out = client.runs.wait(thread["thread_id"], "openseg-r", input={"image_path": "voc.jpg", "vocabulary": "voc21"})
        assert out["error"] is None and out["output"]["summary"].startswith("Segmented a 500x375 image")
        refused = client.runs.wait(
            thread["thread_id"], "openseg-r", input={"image_path": "escape.jpg", "vocabulary": ["cat"]}
        )
        assert "outside the allowed folders" in refused["error"] and refused["output"] is None
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert (work / ".langgraph_api").is_dir()  # the server's state went to its working directory...
    assert _repository_root_state() == root_before  # ...and nothing in the repository changed


TOOL_CACHES = {".pytest_cache", ".hypothesis", ".ruff_cache", ".import_linter_cache", ".grimp_cache", "__pycache__"}


def _repository_root_state() -> dict[str, object]:
    """The repository root's entries (tool caches aside), with the size and time of every
    file in .langgraph_api/ if there is one."""
    state: dict[str, object] = {p.name: None for p in ROOT.iterdir() if p.name not in TOOL_CACHES}
    langgraph_state = ROOT / ".langgraph_api"
    if langgraph_state.is_dir():
        state[".langgraph_api"] = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in langgraph_state.iterdir()}
    return state
