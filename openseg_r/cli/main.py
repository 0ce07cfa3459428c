"""The ``openseg-r`` command line: the parser, assembled from one module per command
group, and the one place that turns errors into exit codes.

Exit codes: 0 success; 2 bad usage or bad input (one-line message); 1 internal
error (one line; ``--debug`` shows the traceback); 3 some images failed (``segment`` on
many images; the others are done); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from openseg_r.cli import evaluate, reason, runs, segment, serve
from openseg_r.cli.options import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, Parser

COMMAND_GROUPS = (segment, reason, runs, evaluate, serve)  # each adds its parsers and handlers
COMMAND_NAMES = "{segment,vocabularies,reason,runs,graph,eval,eval-merge,serve}"


def build_parser() -> argparse.ArgumentParser:
    from openseg_r import __version__

    parser = Parser(prog="openseg-r", description="Open-vocabulary segmentation guided by LMM reasoning.")
    parser.add_argument("--version", action="version", version=f"openseg-r {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar=COMMAND_NAMES)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "merge"]:  # `openseg-r eval merge DIRS --out DIR`
        argv = ["eval-merge", *argv[2:]]
    args = parser.parse_args(argv)
    # Libraries log to the root logger (open_clip logs a failed download as an ERROR
    # before raising); our own one-line message says the same, so keep them quiet.
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.CRITICAL)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("openseg-r: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from openseg_r.errors import OpenSegRError

        if isinstance(exc, OpenSegRError):
            print(f"openseg-r: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.debug:
            traceback.print_exc()
        print(f"openseg-r: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL
