"""The ``openseg-r`` command line: the parser, assembled from one module per command
group, and the one place that turns errors into exit codes.

Exit codes: 0 success; 2 bad usage or bad input (one-line message); 1 internal
error (one line; ``--debug`` shows the traceback); 3 some images failed (``segment`` on
many images; the others are done); 4 no reasoning: the LMM was asked and gave nothing
(unreachable, key refused, every answer unusable; ``--allow-fallback`` keeps bare names),
or ``lmm check`` found the backend unusable; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from openseg_r.cli import evaluate, lmm, reason, runs, segment, segmenters, serve
from openseg_r.cli.options import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NO_REASONING, EXIT_USAGE, Parser
from openseg_r.segmenters.dense_clip.options import RANDOM_WEIGHTS

# What loading.looks_like_path calls a file; importing loading would import torch and open_clip.
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
COMMAND_GROUPS = (segment, reason, segmenters, lmm, runs, evaluate, serve)  # each adds its parsers and handlers
COMMAND_NAMES = "{segment,vocabularies,reason,segmenters,lmm,runs,graph,eval,eval-merge,serve}"


def build_parser() -> argparse.ArgumentParser:
    from openseg_r import __version__

    parser = Parser(prog="openseg-r", description="Open-vocabulary segmentation guided by LMM reasoning.")
    parser.add_argument("--version", action="version", version=f"openseg-r {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar=COMMAND_NAMES)
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return parser


def quiet_library_logging(debug: bool) -> None:
    """Libraries log what our one-line errors say anyway: open_clip logs a failed download
    as an ERROR before raising, and Hugging Face's hub client logs every retry as a
    WARNING, through its own handler and again through the root's. Without ``--debug``
    none of it is shown."""
    level = logging.DEBUG if debug else logging.CRITICAL
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=level)
    for handler in root.handlers:
        if handler not in before:  # the handler made here, not one an embedding application set up
            handler.setLevel(level)  # records of loggers with their own level reach it too
    if not debug:
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is first imported
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # in case it already was


def refuse_missing_weights_file(args: argparse.Namespace) -> None:
    """A ``--clip-pretrained`` file that does not exist fails at once, not after the
    seconds it takes to import torch and open_clip; ``load_clip`` checks it again (tags
    and other values are its business)."""
    value = getattr(args, "clip_pretrained", None)
    if not isinstance(value, str) or value.strip().lower() in RANDOM_WEIGHTS or os.path.exists(value):
        return
    if os.sep in value or "/" in value or value.lower().endswith(WEIGHT_SUFFIXES):  # as loading.looks_like_path
        from openseg_r.errors import WeightsError

        raise WeightsError(f"CLIP weights file not found: {value}")


def main(argv: list[str] | None = None) -> int:
    """The command line. Called with ``argv`` None it is this process's entry point (the
    ``openseg-r`` script, ``python -m openseg_r.cli``): then a closed stdout (``| head``) ends
    it quietly, as a Unix tool, and a server that has stopped leaves at once."""
    as_process = argv is None
    if as_process:
        _interrupt_stops_requests()
    code = _run(argv)
    if as_process:
        code = _flush_stdout(code)
        if _exit_at_once:
            _leave_now(code)
    return code


_exit_at_once = False  # set by a command whose process should skip the interpreter's slow teardown


def _run(argv: list[str] | None) -> int:
    global _exit_at_once
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["eval", "merge"]:  # `openseg-r eval merge DIRS --out DIR`
        argv = ["eval-merge", *argv[2:]]
    Parser.arguments = argv
    args = parser.parse_args(argv)
    quiet_library_logging(args.debug)
    _exit_at_once = bool(getattr(args, "exit_at_once", False))
    try:
        refuse_missing_weights_file(args)
        return args.handler(args)
    except BrokenPipeError:
        return _stdout_closed()
    except KeyboardInterrupt:
        print("openseg-r: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from openseg_r.errors import OpenSegRError, ReasoningUnavailableError

        if isinstance(exc, ReasoningUnavailableError):
            print(f"openseg-r: error: {exc}", file=sys.stderr)
            return EXIT_NO_REASONING
        if isinstance(exc, OpenSegRError):
            print(f"openseg-r: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.debug:
            traceback.print_exc()
        print(f"openseg-r: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL


EXIT_BROKEN_PIPE = 141  # what a shell reports for a process SIGPIPE ended: 128 + 13


def _stdout_closed() -> int:
    """The reader of stdout went away (``openseg-r runs list | head -1``): stop without a word,
    and point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_BROKEN_PIPE


def _flush_stdout(code: int) -> int:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed()
    except (OSError, ValueError):
        pass
    return code


def _leave_now(code: int) -> None:
    """A stopped server's way out: the exit handlers run (Gradio's, logging's), then the process
    ends without the interpreter's teardown of torch, Gradio and the rest, which took 2 to 3
    seconds after "stopped" was already said."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _interrupt_stops_requests() -> None:
    """Ctrl-C: every LMM request in flight is given up at once (its thread may be blocked on a
    server that drips its reply), then KeyboardInterrupt unwinds the main thread as usual."""
    import signal

    from openseg_r._support.cancel import stop_process

    def interrupted(number, frame):
        stop_process("interrupted")
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread: leave Python's own handler
        pass
