"""openseg-r: open-vocabulary segmentation guided by step-by-step visual reasoning (OpenSeg-R).

Public names load lazily, so the command line answers ``--help`` and usage errors
without importing torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "OpenSegR": "openseg_r.model",
    "OpenSegContext": "openseg_r.nodes.context",
    "ModelOptions": "openseg_r.config.options",
    "Segmenter": "openseg_r.segmenters.base",
    "build_graph": "openseg_r.graph.builder",
    "SegmentationResult": "openseg_r.result",
    "Settings": "openseg_r.config.settings",
    "RunsDB": "openseg_r.runs.database",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openseg_r' has no attribute {name!r}")
