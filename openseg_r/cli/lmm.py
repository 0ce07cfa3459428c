"""``openseg-r lmm check [SPEC]``: is an LMM backend usable? See :mod:`openseg_r.lmm.check`."""

from __future__ import annotations

import argparse
import sys

from openseg_r.cli.options import EXIT_NO_REASONING, EXIT_OK, Parser, add_lmm_option_flag


def add_parsers(commands) -> None:
    lmm = commands.add_parser("lmm", help="check an LMM backend")
    actions = lmm.add_subparsers(dest="action", required=True, parser_class=Parser)
    check = actions.add_parser(
        "check", help="reachable?, model listed?, one tiny structured answer (and its latency), can it take images?")
    check.add_argument("spec", nargs="?", default=None,
                       help="the backend spec, as --lmm takes it (default: $OPENSEG_R_LMM, else the config file)")
    add_lmm_option_flag(check)
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Print the report; exit 0 when the backend is usable, else 4 with the reason on one line."""
    from openseg_r.lmm.spec import backend_from_spec, configured_options, configured_spec
    from openseg_r.state import LMMOptions
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
