"""Where a replay starts: the recorded state just before a node, and the node that
state is written "as", so that the graph's own edges lead to the requested node."""

from __future__ import annotations

from pydantic import ValidationError

from openseg_r.graph.state import OpenSegState
from openseg_r.runs.database import RunRecord, RunsDBError

# replay from -> (written as the output of, how to recognise the state before it)
REPLAY_POINTS = {
    "prompt_composition": ("class_alignment", lambda snap, values: "prompt_composition" in snap.next),
    "segmentation": ("prompt_composition", lambda snap, values: "segmentation" in snap.next),
    "self_check": (
        "segmentation",
        lambda snap, values: values.segmentation is not None and values.self_check is None and values.report is None,
    ),
}
ALIASES = {"find_ambiguous_regions": "self_check", "segment": "segmentation", "prompts": "prompt_composition"}


def replay_start(graph, record: RunRecord, from_node: str) -> tuple[dict, str]:
    """(state values before ``from_node``, as_node) from the run's checkpoints."""
    name = ALIASES.get(from_node, from_node)
    if name not in REPLAY_POINTS:
        raise RunsDBError(f"cannot replay from {from_node!r}; choose one of: {', '.join(REPLAY_POINTS)}")
    as_node, before = REPLAY_POINTS[name]
    config = {"configurable": {"thread_id": record.run_id}}
    history = list(graph.get_state_history(config))  # newest first
    for snapshot in reversed(history):  # the earliest state that qualifies
        try:
            values = _state(snapshot.values)
        except ValidationError:  # the input checkpoint, before the state is whole
            continue
        if before(snapshot, values):
            return {field: getattr(values, field) for field in type(values).model_fields}, as_node
    raise RunsDBError(
        f"run {record.run_id} has no recorded state before {name} (status {record.status}"
        + (f", stopped at {record.stopped_at}" if record.stopped_at else "")
        + ")"
    )


def _state(values) -> OpenSegState:
    if isinstance(values, OpenSegState):
        return values
    return OpenSegState.model_validate({k: v for k, v in dict(values).items() if not k.startswith("__")})
