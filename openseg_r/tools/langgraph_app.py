"""The graph that ``langgraph dev`` serves (see ``langgraph.json``), for LangGraph's local
server and Studio.

A run's input is the same as the agent tools' (:class:`SegmentRequest`), under the
same safety limits. The ``segment`` node runs the OpenSeg-R graph as a subgraph, so
Studio shows each of its steps; the output is the tools' structured result.

The server process builds the model once, from the environment
(:meth:`ModelOptions.from_environment <openseg_r.config.options.ModelOptions.from_environment>`:
``OPENSEG_R_CLIP_MODEL``, ``OPENSEG_R_CLIP_PRETRAINED`` (``none`` for random weights),
``OPENSEG_R_DEVICE``, ``OPENSEG_R_PRECISION``, ``OPENSEG_R_ATTENTION``, ``OPENSEG_R_CACHE``,
``OPENSEG_R_RUNS_DB``, ``OPENSEG_R_TEXT_CACHE``, ``OPENSEG_R_BATCH_SIZE``,
``OPENSEG_R_BATCH_WAIT_MS``, ``OPENSEG_R_LMM_CONCURRENCY``; ``OPENSEG_R_LMM`` or the config
file for the LMM backend), and
takes its limits (image roots and so on) from the ``[safety]`` table of the config file.
"""

from __future__ import annotations

import asyncio
import functools

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from openseg_r.config.options import ModelOptions
from openseg_r.model import OpenSegR
from openseg_r.tools.output import SegmentOutput
from openseg_r.tools.safety import SafetyLimits, ToolInputError
from openseg_r.tools.service import SegmentationService, SegmentRequest


class ServerState(SegmentRequest):
    """The request, then the result (or the reason it was refused)."""

    output: SegmentOutput | None = None
    overlay_png: str | None = None
    error: str | None = None


def build_server_graph(service: SegmentationService):
    """``START -> segment -> END``; ``segment`` invokes the OpenSeg-R graph as a subgraph."""

    def segment(state: ServerState, config: RunnableConfig) -> dict:
        request = SegmentRequest.model_validate(state.model_dump(include=set(SegmentRequest.model_fields)))
        try:
            output, overlay = service.segment(request, graph_config=config)
        except ToolInputError as exc:
            return {"error": str(exc), "output": None, "overlay_png": None}
        return {"output": output, "overlay_png": overlay, "error": None}

    builder = StateGraph(ServerState, input_schema=SegmentRequest)
    builder.add_node("segment", segment)
    builder.add_edge(START, "segment")
    builder.add_edge("segment", END)
    return builder.compile(name="openseg-r")


@functools.lru_cache(maxsize=1)
def service_from_environment() -> SegmentationService:
    """Load the model once per server process (the server may ask for the graph per run)."""
    limits = SafetyLimits.from_config()
    options = ModelOptions.from_environment().with_overrides(max_pixels=limits.max_pixels)
    return SegmentationService(OpenSegR.from_options(options), limits)


async def make_graph():
    """The factory ``langgraph.json`` names. Loading the model blocks, so it runs in a
    thread, off the server's event loop."""
    return build_server_graph(await asyncio.to_thread(service_from_environment))
