"""Read a recorded run back: its steps in order, its latest state, and its arrays."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from openseg_r.graph.state import OpenSegState
from openseg_r.runs.database import RunRecord, RunsDB
from openseg_r.runs.events import to_json
from openseg_r.runs.files import FileArtifactStore, MissingArtifactError


@dataclass
class Step:
    index: int
    superstep: int
    node: str
    output: dict  # the node's writes, as JSON


@dataclass
class RecordedRun:
    record: RunRecord
    state: OpenSegState | None  # the latest checkpointed state (partial for a failed run)
    steps: list[Step]
    next_nodes: list[str]
    store: FileArtifactStore
    missing: list[str] = field(default_factory=list)  # artifacts a reader asked for that are gone

    def array(self, key: str | None):
        """The array, or None (recorded in ``missing``) when it is not in the store."""
        if not key:
            return None
        try:
            return self.store.get(key)
        except MissingArtifactError as exc:
            self.missing.append(str(exc))
            return None

    def final_labels(self):
        """The label map the run ended with (after the self-check, if it ran), or None."""
        state = self.state
        if state is None or state.segmentation is None:
            return None
        output = state.self_check.output if state.self_check else state.segmentation
        return self.array(output.labels_key)


def load_run(db: RunsDB, run_id: str, graph) -> RecordedRun:
    record = db.get_run(run_id)
    config = {"configurable": {"thread_id": record.run_id}}
    history = list(graph.get_state_history(config))  # newest first
    steps: list[Step] = []
    for snapshot in reversed(history):
        for task in snapshot.tasks:
            if task.name == "__start__" or task.result is None:
                continue
            steps.append(
                Step(len(steps) + 1, int(snapshot.metadata.get("step", -1)) + 1, task.name, to_json(task.result))
            )
    state = None
    next_nodes: list[str] = []
    if history:
        latest = history[0]
        next_nodes = list(latest.next)
        try:
            values = latest.values
            state = (
                values
                if isinstance(values, OpenSegState)
                else OpenSegState.model_validate({k: v for k, v in dict(values).items() if not k.startswith("__")})
            )
        except ValidationError:
            state = None
    return RecordedRun(record, state, steps, next_nodes, db.artifacts(record.redact))


def summarize_step(step: Step) -> str:
    """One line per node output, for ``runs show``."""
    out = step.output
    node = step.node
    calls = len(out.get("lmm_calls") or [])
    fallbacks = len(out.get("fallbacks") or [])
    tail = (f"; {calls} LMM call(s)" if calls else "") + (f", {fallbacks} fallback(s)" if fallbacks else "")
    if node == "generic_reasoning":
        reasoning = out.get("generic_reasoning") or {}
        with_attributes = sum(1 for r in reasoning.values() if r.get("attributes"))
        return f"{len(reasoning)} classes reasoned, {with_attributes} with attributes{tail}"
    if node == "image_reasoning":
        image = out.get("image_reasoning")
        if not image:
            return f"no image reasoning (fallback: no class filtering){tail}"
        names = ", ".join(c["name"] for c in image.get("candidates", [])[:8])
        return f'"{image.get("description", "")[:80]}"; candidates: {names}{tail}'
    if node == "class_alignment":
        alignment = out.get("alignment") or {}
        present = alignment.get("present")
        dropped = [d["raw"] for d in alignment.get("decisions", []) if d["method"] == "dropped"]
        text = f"present: {', '.join(present)}" if present else "no class filtering"
        return text + (f"; dropped: {', '.join(dropped)}" if dropped else "") + tail
    if node == "prompt_composition":
        prompts = out.get("prompts") or {}
        classes = prompts.get("classes", [])
        sources = {}
        for c in classes:
            sources[c["source"]] = sources.get(c["source"], 0) + 1
        return f"{len(classes)} classes x {len(classes[0]['slots']) if classes else 0} slot(s); " + ", ".join(
            f"{n} from {s}" for s, n in sorted(sources.items())
        )
    if node == "segmentation":
        seg = out.get("segmentation") or {}
        suppressed = seg.get("suppressed_classes") or []
        return f"{seg.get('width')}x{seg.get('height')} label map; {len(suppressed)} class(es) suppressed"
    if node == "find_ambiguous_regions":
        check = out.get("self_check") or {}
        if check.get("stopped"):
            return f"stopped: {check['stopped']}"
        rounds = check.get("rounds") or []
        regions = rounds[-1]["regions"] if rounds else []
        return f"round {check.get('round')}: {len(regions)} region(s): " + "; ".join(
            f"{r['id']} {' vs '.join(e['name'] for e in r['competing'])}" for r in regions
        )
    if node == "check_region":
        answers = out.get("region_answers") or []
        return (
            "; ".join(
                f"{a['region_id']}: {a['verdict']} {a.get('choice') or ''} (confidence {a.get('confidence')})"
                for a in answers
            )
            + tail
        )
    if node == "apply_decisions":
        check = out.get("self_check") or {}
        changes = [c for c in check.get("changes", []) if c["round"] == check.get("round")]
        return "; ".join(f"{c['region_id']}: {c['action']} {c['pixels_changed']} px" for c in changes)
    if node == "finalize":
        report = out.get("report") or {}
        top = sorted(report.get("classes", []), key=lambda c: -c["pixels"])[:5]
        return ", ".join(f"{c['name']} {100 * c['area_fraction']:.1f}%" for c in top if c["pixels"])
    return ", ".join(sorted(out))
