"""The OpenSeg-R graph, built in one place (:mod:`openseg_r.graph.builder`)."""

from openseg_r.graph.builder import build_graph, recursion_limit

__all__ = ["build_graph", "recursion_limit"]
