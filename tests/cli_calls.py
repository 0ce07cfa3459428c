"""Calling the command line in this process, for tests of its exit codes and messages."""

from __future__ import annotations


def call(*argv) -> int:
    """``main``'s exit code, whether it returns it or raises SystemExit."""
    from openseg_r import cli

    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return 0 if code is None else code
