"""The step log: the graph's stream (``updates`` and ``custom``, ``version="v2"``) turned
into plain events, for a JSONL file and for live progress at the terminal.

Event form (one JSON object per line with ``--trace-jsonl``)::

    {"time": 1764070000.1, "run_id": "…", "ns": [], "event": "node_start", "node": "segmentation",
     "input": {…the node's input model…}}
    {"event": "node_end", "node": "segmentation", "seconds": 1.2, "output": {…its output model…}}
    {"event": "progress", "node": "generic_reasoning", "done": 3, "total": 20}
    {"event": "update", "node": "segmentation", "keys": ["segmentation", "timings"]}
    {"event": "interrupt", "questions": [{…}]}

Models are serialised with ``model_dump(mode="json")``; the state holds no pixels,
only store keys, so images appear as references.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

EventHandler = Callable[[dict], None]


def events_from_stream_part(part: dict, run_id: str) -> list[dict]:
    """One v2 stream part -> zero or more events."""
    base = {"time": round(time.time(), 6), "run_id": run_id, "ns": list(part.get("ns") or ())}
    kind, data = part.get("type"), part.get("data")
    if kind == "custom" and isinstance(data, dict):
        return [base | data]
    if kind == "updates" and isinstance(data, dict):
        events = []
        for node, update in data.items():
            if node == "__interrupt__":
                events.append(base | {"event": "interrupt", "questions": [getattr(i, "value", i) for i in update]})
            else:
                keys = sorted(update) if isinstance(update, dict) else []
                events.append(base | {"event": "update", "node": node, "keys": keys})
        return events
    return []


def to_json(value: Any) -> Any:
    """Typed models as JSON (pydantic), everything else as is or as text."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


class JSONLStepLog:
    """Appends every event to a JSONL file, flushed per line (a crash loses nothing written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def __call__(self, event: dict) -> None:
        self._file.write(json.dumps(to_json(event), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TerminalProgress:
    """Live progress per node on stderr: a line when a node ends, a bar while one counts."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._bars: dict[str, Any] = {}

    def __call__(self, event: dict) -> None:
        from tqdm import tqdm

        name, node = event.get("event"), event.get("node")
        if name == "progress" and node:
            bar = self._bars.get(node)
            if bar is None:
                bar = self._bars[node] = tqdm(total=event.get("total"), desc=f"  {node}", file=self.stream, leave=False)
            bar.n = event.get("done", bar.n)
            bar.refresh()
        elif name == "node_end" and node:
            bar = self._bars.pop(node, None)
            if bar is not None:
                bar.close()
            print(f"  done {node:24s} {event.get('seconds', 0):7.2f} s", file=self.stream, flush=True)
        elif name == "interrupt":
            print(f"  paused: {len(event.get('questions', []))} question(s) for you", file=self.stream, flush=True)
