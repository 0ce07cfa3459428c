"""openseg-r: open-vocabulary segmentation guided by step-by-step visual reasoning (OpenSeg-R).

Public names load lazily, so the command line answers ``--help`` and usage errors
without importing torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "OpenSegR": "openseg_r.facade",
    "OpenSegContext": "openseg_r.context",
    "ModelOptions": "openseg_r.options",
    "Segmenter": "openseg_r.context",
    "build_graph": "openseg_r.graph.builder",
    "SegmentationResult": "openseg_r.result",
    "Settings": "openseg_r.state",
    "RunsDB": "openseg_r.runs.database",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openseg_r' has no attribute {name!r}")
