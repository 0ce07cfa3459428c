"""``openseg-r serve mcp``: load the model once, then serve agents until stopped."""

from __future__ import annotations

import argparse
import sys
import time


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
    )
    if args.http and args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: serving on {args.host}: other machines can reach this server", file=sys.stderr)
    service = build_service(args, limits)
    where = f"http://{args.host}:{args.port}/mcp" if args.http else "stdio"
    print(f"openseg-r MCP server ready on {where} (model loaded in {time.perf_counter() - started:.1f} s; "
          f"roots: {', '.join(map(str, limits.resolved_roots())) or 'none'}; urls: {'on' if limits.allow_urls else 'off'}; "
          f"at most {limits.max_concurrent} segmentation(s) at once)", file=sys.stderr, flush=True)
    from openseg_r.tools.mcp_server import run_mcp_server

    run_mcp_server(service, http=args.http, host=args.host, port=args.port)
    return 0


def build_service(args: argparse.Namespace, limits):
    """The model, loaded once, behind the safety limits."""
    from openseg_r.cache import open_cache
    from openseg_r.cli import cache_path
    from openseg_r.facade import OpenSegR
    from openseg_r.lmm.spec import backend_from_spec, configured_spec
    from openseg_r.tools.service import SegmentationService

    spec = configured_spec(args.lmm)
    lmm = backend_from_spec(spec, record=args.lmm_record)
    from openseg_r.segment.loading import pretrained_option

    pretrained = pretrained_option(args.clip_pretrained)
    model = OpenSegR(
        args.clip_model,
        pretrained,
        lmm=lmm,
        reasoning_cache=open_cache(cache_path(args.cache)) if spec.strip() not in ("", "none") else None,
        device=args.device,
        precision=args.precision,
        max_pixels=limits.max_pixels,
        attention=args.attention,
    )
    return SegmentationService(model, limits)
