"""Graph construction and the runtime context.

Names load lazily: the nodes import ``openseg_r.graph.context``, and an eager import
of the builder here would import the nodes back while they are half-initialised.
"""

from importlib import import_module

_EXPORTS = {"build_graph": "openseg_r.graph.builder", "OpenSegContext": "openseg_r.graph.context"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openseg_r.graph' has no attribute {name!r}")
