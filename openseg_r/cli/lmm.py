"""``openseg-r lmm check [SPEC]``: is an LMM backend usable? (:mod:`openseg_r.tools.lmm_check`)
``openseg-r lmm serve MODEL``: a local model (a GGUF file or a transformers folder) served
over the OpenAI-compatible API by ``transformers serve`` (:mod:`openseg_r.lmm.local_server`)."""

from __future__ import annotations

import argparse
import sys

from openseg_r.cli.options import EXIT_NO_REASONING, EXIT_OK, Parser, add_lmm_option_flag


def add_parsers(commands) -> None:
    lmm = commands.add_parser("lmm", help="check an LMM backend")
    actions = lmm.add_subparsers(dest="action", required=True, parser_class=Parser)
    check = actions.add_parser(
        "check", help="reachable?, model listed?, one tiny structured answer (and its latency), can it take images?"
    )
    check.add_argument(
        "spec",
        nargs="?",
        default=None,
        help="the backend spec, as --lmm takes it (default: $OPENSEG_R_LMM, else the config file)",
    )
    add_lmm_option_flag(check)
    check.set_defaults(handler=run_check)
    serve = actions.add_parser(
        "serve", help="serve a local model (a .gguf file or a transformers folder) over the OpenAI-compatible API"
    )
    serve.add_argument("model", help="a .gguf file (converted once into the user cache) or a transformers folder")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="the port (default: 8000)")
    serve.add_argument("--device", default=None, help="cpu, cuda, ... (default: transformers serve's choice)")
    serve.set_defaults(handler=run_serve)


def run_check(args: argparse.Namespace) -> int:
    """Print the report; exit 0 when the backend is usable, else 4 with the reason on one line."""
    from openseg_r.config.settings import LMMOptions
    from openseg_r.lmm.spec import backend_from_spec, configured_options, configured_spec
    from openseg_r.tools.lmm_check import check_backend

    spec = configured_spec(args.spec)
    options = configured_options(LMMOptions.from_pairs(args.lmm_option or []))
    backend = backend_from_spec(spec, options=options.model_copy(update={"concurrency": None}))
    report = check_backend(backend)
    print(report.text(), flush=True)
    if report.problem is not None:
        print(f"openseg-r: error: {report.problem}", file=sys.stderr)
        return EXIT_NO_REASONING
    return EXIT_OK


def run_serve(args: argparse.Namespace) -> int:
    """Convert if needed, say the spec to use, then become ``transformers serve``."""
    import os

    from openseg_r.lmm.local_server import servable_folder, serve_command

    folder = servable_folder(args.model)
    command = serve_command(folder, args.host, args.port, args.device)
    url = f"http://{args.host}:{args.port}/v1"
    print(f"serving {folder} on {url}; use it with --lmm 'openai:{folder}@{url}'", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(command[0], command)  # signals and the exit code are transformers serve's own from here
    return EXIT_OK  # not reached
