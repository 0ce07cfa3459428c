"""The OpenSeg-R graph, built in one readable place.

    START ─┬─(reasoning on)──> generic_reasoning ──┐
           │                   image_reasoning ────┴─> class_alignment ─┐
           └─(reasoning off)────────────────────────────────────────────┴─> prompt_composition
        -> segmentation ─┬─(self-check off, K=0 or R=0)─────────────────────────────> finalize -> END
                         └─> find_ambiguous_regions ─┬─(stopped)────────────────────> finalize
                                  ^                  └─ Send x K ─> check_region ─┐
                                  └──────────────────────────── apply_decisions <─┘

Generic and image reasoning run in parallel, and so do the region questions of
a self-check round. Every node is wrapped only to record its wall time in
``state.timings`` and to emit ``node_start`` (its input model) and ``node_end``
(its output model) custom stream events for the step log.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from pydantic import BaseModel

from openseg_r.graph.state import OpenSegState
from openseg_r.nodes import (
    ApplyDecisionsInput,
    CheckRegionInput,
    ClassAlignmentInput,
    FinalizeInput,
    FindRegionsInput,
    GenericReasoningInput,
    ImageReasoningInput,
    PromptCompositionInput,
    SegmentationInput,
    apply_decisions,
    check_region,
    class_alignment,
    finalize,
    find_ambiguous_regions,
    generic_reasoning,
    image_reasoning,
    prompt_composition,
    segmentation,
)
from openseg_r.nodes.context import OpenSegContext
from openseg_r.schemas import NodeTiming

NODES: list[tuple[str, Callable, type[BaseModel]]] = [
    ("generic_reasoning", generic_reasoning, GenericReasoningInput),
    ("image_reasoning", image_reasoning, ImageReasoningInput),
    ("class_alignment", class_alignment, ClassAlignmentInput),
    ("prompt_composition", prompt_composition, PromptCompositionInput),
    ("segmentation", segmentation, SegmentationInput),
    ("find_ambiguous_regions", find_ambiguous_regions, FindRegionsInput),
    ("check_region", check_region, CheckRegionInput),
    ("apply_decisions", apply_decisions, ApplyDecisionsInput),
    ("finalize", finalize, FinalizeInput),
]


def route_after_start(state: OpenSegState) -> list[str]:
    """Skip the reasoning nodes when reasoning is off."""
    if state.settings.reasoning:
        return ["generic_reasoning", "image_reasoning"]
    return ["prompt_composition"]


def route_after_segmentation(state: OpenSegState) -> str:
    """Self-check only when it is on and could ask something (K > 0 and R > 0)."""
    cfg = state.settings.self_check
    if cfg.enabled and cfg.top_k > 0 and cfg.rounds > 0:
        return "find_ambiguous_regions"
    return "finalize"


def dispatch_regions(state: OpenSegState) -> list[Send] | str:
    """One ``check_region`` task per region of the new round, run in parallel; or finish."""
    check = state.self_check
    if check is None or check.stopped or not check.rounds or check.rounds[-1].round != check.round:
        return "finalize"
    current = check.rounds[-1]
    return [
        Send(
            "check_region",
            CheckRegionInput(
                image=state.image,
                vocabulary=state.vocabulary,
                settings=state.settings,
                region=region,
                call_allowance=current.call_allowance.get(region.id, 1),
            ),
        )
        for region in current.regions
    ]


def build_graph(*, checkpointer: Any = None, cache: Any = None):
    """Return the compiled graph. Invoke it with ``context=OpenSegContext(...)``."""
    builder = StateGraph(OpenSegState, context_schema=OpenSegContext)
    for name, function, input_model in NODES:
        builder.add_node(name, _timed(name, function), input_schema=input_model)
    builder.add_conditional_edges(
        START, route_after_start, ["generic_reasoning", "image_reasoning", "prompt_composition"]
    )
    builder.add_edge(["generic_reasoning", "image_reasoning"], "class_alignment")
    builder.add_edge("class_alignment", "prompt_composition")
    builder.add_edge("prompt_composition", "segmentation")
    builder.add_conditional_edges("segmentation", route_after_segmentation, ["find_ambiguous_regions", "finalize"])
    builder.add_conditional_edges("find_ambiguous_regions", dispatch_regions, ["check_region", "finalize"])
    builder.add_edge("check_region", "apply_decisions")
    builder.add_edge("apply_decisions", "find_ambiguous_regions")
    builder.add_edge("finalize", END)
    return builder.compile(checkpointer=checkpointer, cache=cache, name="openseg-r")


def recursion_limit(settings) -> int:
    """Steps a run may take: the fixed nodes plus three per self-check round, with room to spare."""
    return 25 + 4 * (settings.self_check.rounds + 1)


def _timed(name: str, function: Callable) -> Callable:
    takes_runtime = "runtime" in inspect.signature(function).parameters

    def node(state: BaseModel, runtime: Runtime[OpenSegContext]) -> dict[str, Any]:
        started = time.perf_counter()
        runtime.stream_writer({"event": "node_start", "node": name, "input": state})
        output = function(state, runtime) if takes_runtime else function(state)
        update = {field: getattr(output, field) for field in type(output).model_fields}
        update = {key: value for key, value in update.items() if value is not None}
        seconds = round(time.perf_counter() - started, 6)
        update["timings"] = [NodeTiming(node=name, seconds=seconds)]
        runtime.stream_writer({"event": "node_end", "node": name, "seconds": seconds, "output": output})
        return update

    node.__name__ = name
    node.__doc__ = function.__doc__
    return node
