"""``openseg-r serve mcp``: load the model once, then serve agents until stopped."""

from __future__ import annotations

import argparse
import sys
import time

from openseg_r.cli.options import (
    EXIT_OK,
    Parser,
    add_lmm_options,
    add_model_options,
    add_safety_options,
    add_throughput_options,
    model_options,
)


def add_parsers(commands) -> None:
    serve = commands.add_parser("serve", help="serve openseg-r to agents")
    servers = serve.add_subparsers(dest="server", required=True, parser_class=Parser)
    mcp = servers.add_parser("mcp", help="an MCP server (stdio by default)")
    mcp.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    mcp.add_argument("--host", default="127.0.0.1",
                     help="HTTP bind address; 127.0.0.1 is this machine only (default: 127.0.0.1)")
    mcp.add_argument("--port", type=int, default=8765, help="HTTP port (default: 8765)")
    add_model_options(mcp)
    add_lmm_options(mcp)
    add_safety_options(mcp)
    add_throughput_options(mcp, concurrency=False)  # concurrent calls share forward passes
    mcp.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from openseg_r.tools.safety import SafetyLimits, load_safety_file

    started = time.perf_counter()
    base = load_safety_file(args.safety_config) if args.safety_config else None
    limits = SafetyLimits.from_config(
        base,
        allowed_roots=args.roots,
        allow_urls=args.allow_urls,
        max_concurrent=args.max_concurrent,
        queue_timeout_s=args.queue_timeout,
        call_timeout_s=args.call_timeout,
        max_pixels=args.max_pixels,
        max_text_sentences=args.max_text_sentences,
    )
    if args.http and args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: serving on {args.host}: other machines can reach this server", file=sys.stderr)
    service = build_service(args, limits)
    where = f"http://{args.host}:{args.port}/mcp" if args.http else "stdio"
    print(
        f"openseg-r MCP server ready on {where} (model loaded in {time.perf_counter() - started:.1f} s; "
        f"roots: {', '.join(map(str, limits.resolved_roots())) or 'none'}; "
        f"urls: {'on' if limits.allow_urls else 'off'}; "
        f"at most {limits.max_concurrent} segmentation(s) at once)",
        file=sys.stderr,
        flush=True,
    )
    from openseg_r.tools.mcp_server import run_mcp_server

    stopped = run_mcp_server(service, http=args.http, host=args.host, port=args.port)
    return EXIT_OK if stopped is None else stopped  # after SIGINT 130, after SIGTERM 0 (its line is said)


def build_service(args: argparse.Namespace, limits):
    """The model, loaded once, behind the safety limits (whose pixel cap it takes)."""
    from openseg_r.facade import OpenSegR
    from openseg_r.tools.service import SegmentationService

    model = OpenSegR.from_options(model_options(args, max_pixels=limits.max_pixels))
    return SegmentationService(model, limits)
