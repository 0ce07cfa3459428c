"""The OpenSeg-R graph, built in one readable place.

    START ─┬─(reasoning on)──> generic_reasoning ──┐
           │                   image_reasoning ────┴─> class_alignment ─┐
           └─(reasoning off)────────────────────────────────────────────┴─> prompt_composition
                                                    -> segmentation -> finalize -> END

Generic and image reasoning run in parallel. Every node is wrapped only to
record its wall time in ``state.timings``.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel

from openseg_r.graph.context import OpenSegContext
from openseg_r.nodes import (
    ClassAlignmentInput,
    FinalizeInput,
    GenericReasoningInput,
    ImageReasoningInput,
    PromptCompositionInput,
    SegmentationInput,
    class_alignment,
    finalize,
    generic_reasoning,
    image_reasoning,
    prompt_composition,
    segmentation,
)
from openseg_r.state import NodeTiming, OpenSegState

NODES: list[tuple[str, Callable, type[BaseModel]]] = [
    ("generic_reasoning", generic_reasoning, GenericReasoningInput),
    ("image_reasoning", image_reasoning, ImageReasoningInput),
    ("class_alignment", class_alignment, ClassAlignmentInput),
    ("prompt_composition", prompt_composition, PromptCompositionInput),
    ("segmentation", segmentation, SegmentationInput),
    ("finalize", finalize, FinalizeInput),
]


def route_after_start(state: OpenSegState) -> list[str]:
    """Skip the reasoning nodes when reasoning is off."""
    if state.settings.reasoning:
        return ["generic_reasoning", "image_reasoning"]
    return ["prompt_composition"]


def build_graph(*, checkpointer: Any = None, cache: Any = None):
    """Return the compiled graph. Invoke it with ``context=OpenSegContext(...)``."""
    builder = StateGraph(OpenSegState, context_schema=OpenSegContext)
    for name, function, input_model in NODES:
        builder.add_node(name, _timed(name, function), input_schema=input_model)
    builder.add_conditional_edges(START, route_after_start, ["generic_reasoning", "image_reasoning", "prompt_composition"])
    builder.add_edge(["generic_reasoning", "image_reasoning"], "class_alignment")
    builder.add_edge("class_alignment", "prompt_composition")
    builder.add_edge("prompt_composition", "segmentation")
    builder.add_edge("segmentation", "finalize")
    builder.add_edge("finalize", END)
    return builder.compile(checkpointer=checkpointer, cache=cache, name="openseg-r")


def _timed(name: str, function: Callable) -> Callable:
    takes_runtime = "runtime" in inspect.signature(function).parameters

    def node(state: BaseModel, runtime: Runtime[OpenSegContext]) -> dict[str, Any]:
        started = time.perf_counter()
        output = function(state, runtime) if takes_runtime else function(state)
        update = {field: getattr(output, field) for field in type(output).model_fields}
        update = {key: value for key, value in update.items() if value is not None}
        update["timings"] = [NodeTiming(node=name, seconds=round(time.perf_counter() - started, 6))]
        return update

    node.__name__ = name
    node.__doc__ = function.__doc__
    return node
