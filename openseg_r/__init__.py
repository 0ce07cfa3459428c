"""openseg-r: open-vocabulary segmentation guided by step-by-step visual reasoning (OpenSeg-R).

The public face: every name the README and the guides in ``docs/`` use is here, in
``__all__`` (a test holds the two together). Names load lazily, so the command line
answers ``--help`` and usage errors without importing torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    # the model and how it is built
    "OpenSegR": "openseg_r.model",
    "SegmentationRun": "openseg_r.model",
    "ImageOutcome": "openseg_r.model",
    "ModelOptions": "openseg_r.config.options",
    "Settings": "openseg_r.config.settings",
    "SelfCheckSettings": "openseg_r.config.settings",
    "LMMOptions": "openseg_r.config.settings",
    "SegmentationResult": "openseg_r.result",
    # the graph, its state, its context and its steps
    "build_graph": "openseg_r.graph.builder",
    "OpenSegState": "openseg_r.graph.state",
    "OpenSegContext": "openseg_r.nodes.context",
    "nodes": None,  # the module: one typed function per step
    "ImageRef": "openseg_r.schemas",
    "Vocabulary": "openseg_r.schemas",
    "load_builtin": "openseg_r.vocab",
    "load_image": "openseg_r._support.images",
    "ArtifactStore": "openseg_r._support.store",
    "CancelToken": "openseg_r._support.cancel",
    "Cancelled": "openseg_r._support.cancel",
    # segmenters: the protocol, its data, the registry
    "Segmenter": "openseg_r.segmenters.base",
    "SegmenterKind": "openseg_r.segmenters.base",
    "BuildRequest": "openseg_r.segmenters.base",
    "ClassFilter": "openseg_r.segmenters.base",
    "SegmentationArrays": "openseg_r.segmenters.base",
    "SegmentJob": "openseg_r.segmenters.base",
    "build_segmenter": "openseg_r.segmenters.registry",
    # recorded runs, agents and servers, clusters
    "RunsDB": "openseg_r.runs.database",
    "SegmentationService": "openseg_r.tools.service",
    "SafetyLimits": "openseg_r.tools.safety",
    "segment_tool": "openseg_r.tools.langchain_tool",
    "segment_dataset": "openseg_r.distributed",
    "run_eval_on_ray": "openseg_r.distributed",
    # errors
    "OpenSegRError": "openseg_r.errors",
    "ConfigError": "openseg_r.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'openseg_r' has no attribute {name!r}")
    module = _EXPORTS[name]
    return import_module(f"openseg_r.{name}") if module is None else getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
