"""The ``openseg-r`` command line (``openseg_r.cli:main``).

One module per command group (:mod:`.segment`, :mod:`.reason`, :mod:`.lmm`, :mod:`.runs`,
:mod:`.evaluate`, :mod:`.serve`), the options they share in :mod:`.options`, and
the parser and exit codes in :mod:`.main`. Modules import torch and the models only
inside the command that needs them, so ``--help`` and usage errors stay fast.
"""

from openseg_r.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
