"""Graph construction and the runtime context."""

from openseg_r.graph.builder import build_graph
from openseg_r.graph.context import OpenSegContext

__all__ = ["OpenSegContext", "build_graph"]
