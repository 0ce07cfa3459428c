"""The MCP server's cold start-up time, and the per-call overhead of the MCP path over a
direct Python call on the same image.

Both sides load the same model: the full ViT-B/16 architecture (random weights unless
--pretrained names a local weights file) with the scripted reasoning of
examples/voc_reasoning.json. The server runs over stdio, started by the official MCP
client. Calls alternate between the direct service and the MCP client, so the
medians are comparable on a noisy machine.

    python benchmarks/bench_mcp.py [--repeats 7] [--pretrained FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mcp import Client, StdioServerParameters  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r.tools.safety import SafetyLimits  # noqa: E402
from openseg_r.tools.service import SegmentationService  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
REQUEST = {"image_path": "voc.jpg", "vocabulary": "voc21"}


async def main(args) -> None:
    pretrained = args.pretrained or "none"
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "openseg_r.cli",
            "serve",
            "mcp",
            "--clip-model",
            "ViT-B-16",
            "--clip-pretrained",
            pretrained,
            "--lmm",
            f"scripted:{SCRIPT}",
            "--cache",
            "none",
            "--root",
            str(ROOT / "examples"),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    started = time.perf_counter()
    async with Client(params) as client:
        await client.list_tools()
        cold = time.perf_counter() - started
        model = OpenSegR(clip_model="ViT-B-16", clip_pretrained=args.pretrained or "none", lmm=f"scripted:{SCRIPT}")
        service = SegmentationService(model, SafetyLimits(allowed_roots=[ROOT / "examples"]))
        service.segment(REQUEST)  # warm both: text embeddings, generic reasoning
        await client.call_tool("segment", REQUEST)
        direct, over_mcp = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            service.segment(REQUEST)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = await client.call_tool("segment", REQUEST)
            over_mcp.append(time.perf_counter() - t)
            assert not result.is_error, result.content[0].text
        cheap_direct, cheap_mcp = [], []
        for _ in range(50):  # the protocol's own cost, on a call with no model work
            t = time.perf_counter()
            service.list_vocabularies()
            cheap_direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            await client.call_tool("list_vocabularies", {})
            cheap_mcp.append(time.perf_counter() - t)
    payload = len(json.dumps(result.structured_content)) + sum(
        len(getattr(c, "data", "") or "") for c in result.content
    )
    d, m = statistics.median(direct), statistics.median(over_mcp)
    print(
        f"model=ViT-B-16 weights={'random' if args.pretrained is None else args.pretrained} image=voc.jpg 500x375 "
        f"vocabulary=voc21 repeats={args.repeats}"
    )
    print(f"cold start-up (spawn -> tools listed, model loaded): {cold:.2f} s")
    print(f"median s/call: direct {d:.3f}, MCP stdio {m:.3f}; overhead {1000 * (m - d):+.0f} ms ({m / d:.2f}x)")
    cd, cm = statistics.median(cheap_direct), statistics.median(cheap_mcp)
    print(f"round trip of list_vocabularies (no model work): direct {1000 * cd:.1f} ms, MCP {1000 * cm:.1f} ms")
    print(f"MCP result size: {payload / 1e6:.2f} MB (structured content + overlay)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--pretrained", default=None)
    asyncio.run(main(parser.parse_args()))
