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
    add_recording_options,
    add_safety_options,
    add_self_check_options,
    add_settings_options,
    add_throughput_options,
    model_options,
    options_and_settings,
    runs_db_option,
)


def add_parsers(commands) -> None:
    serve = commands.add_parser("serve", help="serve openseg-r to agents")
    servers = serve.add_subparsers(dest="server", required=True, parser_class=Parser)
    mcp = servers.add_parser("mcp", help="an MCP server (stdio by default)")
    mcp.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    mcp.add_argument(
        "--host", default="127.0.0.1", help="HTTP bind address; 127.0.0.1 is this machine only (default: 127.0.0.1)"
    )
    mcp.add_argument("--port", type=int, default=8765, help="HTTP port (default: 8765)")
    add_model_options(mcp)
    add_lmm_options(mcp)
    add_safety_options(mcp)
    add_throughput_options(mcp, concurrency=False)  # concurrent calls share forward passes
    mcp.set_defaults(handler=run_serve, exit_at_once=True)

    web = servers.add_parser(
        "web",
        help="a web page: upload, name classes, watch the reasoning, answer the "
        "self-check (needs the web extra: pip install 'openseg-r[web]')",
    )
    web.add_argument(
        "--host", default="127.0.0.1", help="bind address; 127.0.0.1 is this machine only (default: 127.0.0.1)"
    )
    web.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    web.add_argument(
        "--lmm-choice",
        action="append",
        default=None,
        dest="lmm_choices",
        metavar="SPEC",
        help="another LMM backend the page may pick (repeat for several; the page always offers --lmm and none)",
    )
    web.add_argument(
        "--allow-any-lmm",
        action="store_true",
        default=None,
        help="let the page type any backend spec: it can then make this server connect to any "
        "host and read local model files (off by default)",
    )
    add_model_options(web)
    add_lmm_options(web, allow_fallback=True)
    add_settings_options(web, baseline_flag=False)
    add_self_check_options(web, toggles=False)
    add_recording_options(web, step_log=False)
    add_safety_options(web, paths=False)
    add_throughput_options(web, concurrency=False)
    web.set_defaults(handler=run_serve_web, exit_at_once=True)


def run_serve(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    limits = safety_limits(args)
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


def run_serve_web(args: argparse.Namespace) -> int:
    """Load the model once, then serve the page until a signal stops it."""
    import tempfile
    from pathlib import Path

    from openseg_r.config.settings import Settings
    from openseg_r.errors import ConfigError

    try:
        import gradio  # noqa: F401 (the extra is checked before the model loads)
    except ImportError:
        raise ConfigError("the web app needs Gradio: pip install 'openseg-r[web]'") from None
    started = time.perf_counter()
    limits = safety_limits(args)
    if args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: serving on {args.host}: other machines can reach this page", file=sys.stderr)
    from openseg_r.tools.web.server import listen

    listening = listen(args.host, args.port)  # a port in use fails before the model loads
    try:
        runs_db = runs_db_option(args)
        options, settings = options_and_settings(
            args, None, Settings(), runs_db=runs_db, redact=args.redact, max_pixels=limits.max_pixels
        )
        from openseg_r.model import OpenSegR
        from openseg_r.tools.service import SegmentationService
        from openseg_r.tools.web.app import WebApp
        from openseg_r.tools.web.backends import BackendChoices

        model = OpenSegR.from_options(options, settings=settings)
        service = SegmentationService(model, limits)
        backends = BackendChoices(model, args.lmm_choices, allow_any=bool(args.allow_any_lmm))
        with tempfile.TemporaryDirectory(prefix="openseg-r-web-") as downloads:
            web = WebApp(service, backends, Path(downloads))
            from openseg_r.tools.web.server import serve_web

            def ready() -> None:
                print(
                    f"openseg-r web page ready on http://{args.host}:{args.port}/ (model loaded in "
                    f"{time.perf_counter() - started:.1f} s; LMM backends: {', '.join(backends.choices)}; "
                    f"recording: {runs_db or 'off'}; at most {limits.max_concurrent} segmentation(s) at once)",
                    file=sys.stderr,
                    flush=True,
                )

            stopped = serve_web(web, listening, on_ready=ready)
    finally:
        listening.close()  # a model that fails to load leaves no bound socket behind
    return EXIT_OK if stopped is None else stopped


def safety_limits(args: argparse.Namespace):
    """The [safety] table (or --safety-config), with the flags given over it; a server without
    image paths has no --root and --allow-urls."""
    from openseg_r.tools.safety import SafetyLimits, load_safety_file

    base = load_safety_file(args.safety_config) if args.safety_config else None
    return SafetyLimits.from_config(
        base,
        allowed_roots=getattr(args, "roots", None),
        allow_urls=getattr(args, "allow_urls", None),
        max_concurrent=args.max_concurrent,
        queue_timeout_s=args.queue_timeout,
        call_timeout_s=args.call_timeout,
        max_pixels=args.max_pixels,
        max_text_sentences=args.max_text_sentences,
    )


def build_service(args: argparse.Namespace, limits):
    """The model, loaded once, behind the safety limits (whose pixel cap it takes)."""
    from openseg_r.model import OpenSegR
    from openseg_r.tools.service import SegmentationService

    model = OpenSegR.from_options(model_options(args, max_pixels=limits.max_pixels))
    return SegmentationService(model, limits)
