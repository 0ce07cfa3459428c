"""The web app's live trace panel and result legend, as HTML fragments, with no Gradio in sight.

:class:`LiveTrace` is fed the step-log events of one run (:mod:`openseg_r.runs.events`) as
they arrive and renders what is known so far; :func:`result_html` renders a finished result.
Everything shown may come from an LMM, so every string is escaped (``html.escape``, quotes
too) and clipped, and every list is capped: a hostile answer can neither inject markup nor
flood the page. Stable hooks for browser tests: ``li.node[data-node][data-status]``,
``section[data-section]`` and ``table[data-section=legend] tr[data-class]``.
"""

from __future__ import annotations

import html
import threading
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, TypeAdapter, ValidationError

from openseg_r._support.render import UNKNOWN_COLOUR, class_colors, format_share
from openseg_r.schemas import (
    ClassAlignment,
    ClassReasoning,
    Fallback,
    ImageReasoning,
    LMMCall,
    PromptSet,
    RegionAnswer,
    SelfCheckState,
    region_order,
)

MAX_SHOWN_TEXT = 300  # characters of any one string
MAX_SHOWN_DESCRIPTION = 1000  # the image description is the one long text worth reading whole
MAX_SHOWN_ITEMS = 50  # rows or entries of any one list
MAX_SHOWN_PHRASES = 6  # composed prompts shown per class
MAX_TIMELINE = 120  # steps shown; older finished ones fold into one line
MAX_LEGEND_ROWS = 200

TRACE_CSS = """
.openseg-trace section, .openseg-result { margin: 0.4em 0; }
.openseg-trace h4 { margin: 0.3em 0; font-size: 0.95em; }
.openseg-trace table, .openseg-result table { border-collapse: collapse; font-size: 0.9em; }
.openseg-trace th, .openseg-trace td, .openseg-result th, .openseg-result td {
  border: 1px solid #8888; padding: 2px 6px; text-align: left; vertical-align: top; }
.openseg-trace ol.openseg-timeline { list-style: none; padding-left: 0; margin: 0; }
.openseg-trace li.node { margin: 1px 0; }
.openseg-spinner { display: inline-block; width: 0.8em; height: 0.8em; border: 2px solid #8886;
  border-top-color: #2563eb; border-radius: 50%; vertical-align: middle;
  animation: openseg-spin 0.8s linear infinite; }
@keyframes openseg-spin { to { transform: rotate(360deg); } }
.openseg-swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #000; vertical-align: middle; }
.openseg-muted { opacity: 0.7; }
.openseg-waiting { font-weight: bold; }
"""

# The output fields the panel shows, read the same way whether an event carries models or their JSON.
_OUTPUT_FIELDS: dict[str, TypeAdapter] = {
    "generic_reasoning": TypeAdapter(dict[str, ClassReasoning]),
    "image_reasoning": TypeAdapter(ImageReasoning),
    "alignment": TypeAdapter(ClassAlignment),
    "prompts": TypeAdapter(PromptSet),
    "self_check": TypeAdapter(SelfCheckState),
    "region_answers": TypeAdapter(list[RegionAnswer]),
    "lmm_calls": TypeAdapter(list[LMMCall]),
    "fallbacks": TypeAdapter(list[Fallback]),
}


@dataclass
class _Step:
    """One node run on the timeline."""

    node: str
    label: str = ""  # which one of a repeated node: a region id, "#2"
    status: str = "running"
    seconds: float | None = None


class LiveTrace:
    """What the page shows of one run, built from its step-log events as they arrive.

    ``add`` may be called from the thread that runs the graph while ``html`` is called from
    the one that serves the page: both hold a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: list[_Step] = []
        self._progress: dict[str, tuple[int, int]] = {}
        self._waiting: dict[str, None] | None = None  # the questions a paused run waits on, by region
        self._first_time: float | None = None
        self._last_time: float | None = None
        self._generic: dict[str, ClassReasoning] = {}
        self._image: ImageReasoning | None = None
        self._alignment: ClassAlignment | None = None
        self._prompts: PromptSet | None = None
        self._self_check: SelfCheckState | None = None
        self._answers: list[RegionAnswer] = []
        self._calls: list[LMMCall] = []
        self._fallbacks: list[Fallback] = []

    # ------------------------------------------------------------------ events

    def add(self, event: dict) -> None:
        """Take one step-log event; unknown or malformed ones change nothing."""
        if not isinstance(event, dict):
            return
        name = event.get("event")
        handler = self._HANDLERS.get(name) if isinstance(name, str) else None
        with self._lock:
            if isinstance(event.get("time"), (int, float)):
                self._first_time = event["time"] if self._first_time is None else self._first_time
                self._last_time = event["time"]
            if handler is not None:
                handler(self, event)

    def _node_start(self, event: dict) -> None:
        node = str(event.get("node") or "?")
        self._waiting = None  # a node runs again: the questions were answered
        region_id = _region_id(event.get("input"))
        for step in self._steps:
            if step.status == "running" and step.node == node and region_id in (None, step.label):
                return  # a node that paused for a person starts over when resumed: the same step
        self._steps.append(_Step(node=node, label=region_id or self._count_label(node)))

    def _count_label(self, node: str) -> str:
        """ "#2" and on for a node seen before (each self-check round runs some nodes again)."""
        earlier = sum(1 for step in self._steps if step.node == node)
        return f"#{earlier + 1}" if earlier else ""

    def _node_end(self, event: dict) -> None:
        node = str(event.get("node") or "?")
        typed = _typed_output(event.get("output"))
        step = self._running_step(node, [answer.region_id for answer in typed.get("region_answers", [])])
        if step is None:  # its start was not seen (a resumed run): show it finished all the same
            step = _Step(node=node)
            self._steps.append(step)
        step.status = "done"
        seconds = event.get("seconds")
        step.seconds = float(seconds) if isinstance(seconds, (int, float)) else None
        self._progress.pop(node, None)
        self._take_output(typed)

    def _running_step(self, node: str, region_ids: list[str]) -> _Step | None:
        running = [step for step in self._steps if step.node == node and step.status == "running"]
        for step in running:
            if step.label in region_ids:
                return step
        return running[0] if running else None

    def _take_output(self, typed: dict[str, Any]) -> None:
        if "generic_reasoning" in typed:
            self._generic.update(typed["generic_reasoning"])
        self._image = typed.get("image_reasoning", self._image)
        self._alignment = typed.get("alignment", self._alignment)
        self._prompts = typed.get("prompts", self._prompts)
        self._self_check = typed.get("self_check", self._self_check)
        self._answers += typed.get("region_answers", [])
        self._calls += typed.get("lmm_calls", [])
        self._fallbacks += typed.get("fallbacks", [])

    def _progress_event(self, event: dict) -> None:
        done, total = event.get("done"), event.get("total")
        if isinstance(done, int) and isinstance(total, int) and total > 0:
            self._progress[str(event.get("node") or "?")] = (done, total)

    def _interrupt(self, event: dict) -> None:
        """Parallel region questions pause the run one interrupt event each: gather them."""
        questions = event.get("questions")
        waiting = self._waiting if self._waiting is not None else {}
        for question in questions if isinstance(questions, (list, tuple)) else []:
            key = _fields(question).get("region_id")
            waiting[str(key) if key is not None else f"#{len(waiting)}"] = None
        self._waiting = waiting

    _HANDLERS: dict[str, Callable[["LiveTrace", dict], None]] = {
        "node_start": _node_start,
        "node_end": _node_end,
        "progress": _progress_event,
        "interrupt": _interrupt,
    }

    # ------------------------------------------------------------------ views

    def running(self) -> list[str]:
        """Nodes started and not yet ended, in start order (a node running twice at once is listed twice)."""
        with self._lock:
            return [step.node for step in self._steps if step.status == "running"]

    def status_line(self) -> str:
        """One short line for a progress label: what runs now, with counts, or how the run stands."""
        with self._lock:
            if self._waiting is not None:
                return f"waiting for your answers: {len(self._waiting)} question(s)"
            running = [step.node for step in self._steps if step.status == "running"]
            if running:
                return ", ".join(self._running_text(node, running.count(node)) for node in dict.fromkeys(running))
            if any(step.node == "finalize" and step.status == "done" for step in self._steps):
                took = "" if self._first_time is None else f" in {self._last_time - self._first_time:.1f} s"
                return "done" + took
            return "between steps" if self._steps else "starting"

    def _running_text(self, node: str, count: int) -> str:
        if node in self._progress:
            done, total = self._progress[node]
            return f"{node} {done}/{total}"
        return f"{node} ×{count}" if count > 1 else node

    def html(self, cache: dict | None = None) -> str:
        """The whole trace panel as an HTML fragment; a section appears once its data has arrived.
        ``cache``: the finished result's reasoning-cache counts, for the usage line."""
        with self._lock:
            parts = [
                self._timeline_html(),
                self._image_html(),
                self._generic_html(),
                self._alignment_html(),
                self._prompts_html(),
                self._self_check_html(),
                self._usage_html(cache),
            ]
        return '<div class="openseg-trace">' + "".join(parts) + "</div>"

    def _timeline_html(self) -> str:
        hidden = max(0, len(self._steps) - MAX_TIMELINE)
        folded = {id(step) for step in [step for step in self._steps if step.status == "done"][:hidden]}
        shown = [step for step in self._steps if id(step) not in folded]
        items = [f'<li class="openseg-muted">… {len(folded)} earlier steps</li>'] if folded else []
        items += [self._step_html(step) for step in shown]
        waiting = ""
        if self._waiting is not None:
            waiting = f'<p class="openseg-waiting">waiting for your answers: {len(self._waiting)} question(s)</p>'
        return _section("timeline", "Steps", waiting + '<ol class="openseg-timeline">' + "".join(items) + "</ol>")

    def _step_html(self, step: _Step) -> str:
        name = _text(step.node) + (f' <span class="openseg-muted">{_text(step.label)}</span>' if step.label else "")
        if step.status == "running" and self._waiting is not None and step.label in self._waiting:
            return (
                f'<li class="node" data-node="{_text(step.node)}" data-status="waiting">⏸ {name} '
                '<span class="openseg-muted">waiting for your answer</span></li>'
            )
        if step.status == "running":
            marker = '<span class="openseg-spinner"></span>'
            detail = ""
            if step.node in self._progress:
                done, total = self._progress[step.node]
                detail = f' <progress value="{done}" max="{total}"></progress> {done}/{total}'
        else:
            marker = "✓"
            detail = f' <span class="openseg-muted">{step.seconds:.2f} s</span>' if step.seconds is not None else ""
        status = "running" if step.status == "running" else "done"
        return f'<li class="node" data-node="{_text(step.node)}" data-status="{status}">{marker} {name}{detail}</li>'

    def _image_html(self) -> str:
        if self._image is None:
            return ""
        shown, hidden = _capped(self._image.candidates)
        rows = [_row(c.name, _category(c), ", ".join(c.attributes[:MAX_SHOWN_ITEMS])) for c in shown]
        body = f'<p class="openseg-description">{_text(self._image.description, MAX_SHOWN_DESCRIPTION)}</p>' + _table(
            ["seen", "category", "attributes"], rows, hidden
        )
        return _section("image_reasoning", "What the LMM sees in the image", body)

    def _generic_html(self) -> str:
        if not self._generic:
            return ""
        shown, hidden = _capped(list(self._generic.items()))
        rows = [_row(name, _category(reasoning), ", ".join(reasoning.attributes)) for name, reasoning in shown]
        return _section(
            "generic", "What each class looks like", _table(["class", "category", "attributes"], rows, hidden)
        )

    def _alignment_html(self) -> str:
        if self._alignment is None:
            return ""
        present = self._alignment.present
        summary = (
            "present: " + ", ".join(present[:MAX_SHOWN_ITEMS])
            if present is not None
            else "no class filter (no usable image reasoning)"
        )
        shown, hidden = _capped(self._alignment.decisions)
        rows = [
            _row(d.raw, d.matched or "dropped", d.method, "" if d.score is None else f"{d.score:.2f}") for d in shown
        ]
        table = _table(["LMM said", "class", "how", "score"], rows, hidden) if rows else ""
        body = f"<p>{_text(summary)}</p>" + table
        return _section("alignment", "Names mapped onto the vocabulary", body)

    def _prompts_html(self) -> str:
        if self._prompts is None:
            return ""
        shown, hidden = _capped(self._prompts.classes)
        rows = []
        for prompts in shown:
            phrases = [phrase for row in prompts.phrases() for phrase in row]
            first, more = _capped(phrases, MAX_SHOWN_PHRASES)
            rows.append(_row(prompts.name, prompts.source, "; ".join(first) + _more(more)))
        return _section("prompts", "Composed prompts", _table(["class", "from", "phrases"], rows, hidden))

    def _self_check_html(self) -> str:
        if not self._answers and self._self_check is None:
            return ""
        ordered = sorted(self._answers, key=_answer_order)
        shown, hidden = _capped(ordered)
        rows = [
            _row(
                a.region_id,
                a.verdict,
                a.choice or a.raw_choice or "",
                "" if a.confidence is None else f"{a.confidence:.2f}",
                a.source,
                " — ".join(part for part in (a.reason, a.note) if part),
            )
            for a in shown
        ]
        stopped = self._self_check.stopped if self._self_check is not None else None
        body = (f"<p>stopped: {_text(stopped)}</p>" if stopped else "") + (
            _table(["region", "verdict", "choice", "confidence", "source", "reason"], rows, hidden) if rows else ""
        )
        return _section("self_check", "Self-check answers", body)

    def _usage_html(self, cache: dict | None = None) -> str:
        if not self._calls and not self._fallbacks:
            return ""
        line = usage_line(self._calls, self._fallbacks, cache)
        return _section("usage", "LMM usage", f"<p>{_text(line)}</p>" + _fallbacks_html(self._fallbacks))


# ---------------------------------------------------------------------- the finished result


def result_html(result) -> str:
    """Legend and per-class table for a finished :class:`~openseg_r.result.SegmentationResult`
    (the overlay's colours and shares, largest class first), then a line of LMM usage, time
    and fallbacks with their reasons."""
    colours = class_colors(len(result.names))
    by_name = {summary.name: summary for summary in result.classes}
    total = max(1, int(result.labels.size))
    shown, hidden = _capped(result.present, MAX_LEGEND_ROWS)
    rows = []
    for name in shown:
        summary = by_name[name]
        confidence = "–" if summary.mean_confidence is None else f"{summary.mean_confidence:.2f}"
        rows.append(
            f'<tr data-class="{_text(name)}"><td>{_swatch(colours[summary.index])}</td><td>{_text(name)}</td>'
            f"<td>{format_share(summary.pixels / total, present=True)}</td><td>{confidence}</td></tr>"
        )
    unknown = result.state.report.unknown_pixels if result.state.report else 0
    if unknown:
        rows.append(
            f'<tr class="openseg-unknown"><td>{_swatch(UNKNOWN_COLOUR)}</td><td>unknown</td>'
            f"<td>{format_share(unknown / total, present=True)}</td><td>–</td></tr>"
        )
    if hidden:
        rows.append(f'<tr><td colspan="4">{_more(hidden)}</td></tr>')
    legend = (
        '<table data-section="legend"><tr><th></th><th>class</th><th>area</th><th>confidence</th></tr>'
        + "".join(rows)
        + "</table>"
    )
    usage = _result_usage_html(result.state, result.reasoning_cache)
    panoptic = _panoptic_html(result, colours)
    return f'<div class="openseg-result">{legend}{_instances_html(result, colours)}{panoptic}{usage}</div>'


def _instances_html(result, colours) -> str:
    """The objects found (segmenters that find instances), best first: class, phrase, score, box."""
    if not result.instances:
        return ""
    index = {name: i for i, name in enumerate(result.names)}
    shown, hidden = _capped(result.instances, MAX_LEGEND_ROWS)
    rows = [
        f'<tr data-instance="{n}"><td>{_swatch(colours[index[i.class_name]])}</td><td>{_text(i.class_name)}</td>'
        f"<td>{_text(i.phrase)}</td><td>{i.score:.2f}</td><td>{', '.join(f'{v:.0f}' for v in i.box)}</td></tr>"
        for n, i in enumerate(shown)
    ]
    if hidden:
        rows.append(f'<tr><td colspan="5">{_more(hidden)}</td></tr>')
    return (
        f"<p>{len(result.instances)} instance(s), outlined on the overlay:</p>"
        '<table data-section="instances"><tr><th></th><th>class</th><th>phrase</th><th>score</th><th>box</th></tr>'
        + "".join(rows)
        + "</table>"
    )


def _panoptic_html(result, colours) -> str:
    """The panoptic segments (things as objects, stuff as regions), largest first."""
    found = result.panoptic()
    if not found.segments:
        return ""
    shown, hidden = _capped(sorted(found.segments, key=lambda s: -s.area), MAX_LEGEND_ROWS)
    total = max(1, int(result.labels.size))
    rows = [
        f'<tr data-segment="{s.id}"><td>{_swatch(colours[s.category_id])}</td><td>{_text(s.name)}</td>'
        f"<td>{'thing' if s.isthing else 'stuff'}</td><td>{format_share(s.area / total, present=True)}</td>"
        f"<td>{s.score:.2f}</td></tr>"
        for s in shown
    ]
    if hidden:
        rows.append(f'<tr><td colspan="5">{_more(hidden)}</td></tr>')
    notes = "".join(f'<p class="openseg-note">{_text(note)}</p>' for note in found.notes)
    return (
        f"<p>{len(found.segments)} panoptic segment(s), things from {_text(found.things_from)} "
        "(panoptic.png and panoptic_overlay.png with the downloads):</p>"
        '<table data-section="panoptic"><tr><th></th><th>class</th><th>kind</th><th>area</th><th>score</th></tr>'
        + "".join(rows)
        + "</table>"
        + notes
    )


def _result_usage_html(state, cache: dict | None = None) -> str:
    line = usage_line(state.lmm_calls, state.fallbacks, cache, seconds=sum(t.seconds for t in state.timings))
    return f'<p class="openseg-usage">{_text(line)}</p>' + _fallbacks_html(state.fallbacks)


def usage_line(calls, fallbacks, cache: dict | None = None, seconds: float | None = None) -> str:
    """The one LMM-usage line the trace and the legend both show: calls, how many failed, answers
    the reasoning cache gave (``cache``: a result's ``reasoning_cache`` counts), tokens, fallbacks."""
    failed = sum(1 for call in calls if not call.ok)
    hits = int((cache or {}).get("hits") or 0)
    notes = [f"{failed} failed"] if failed else []
    notes += [f"{hits} answer(s) from the reasoning cache"] if hits else []
    return (
        f"{len(calls)} LMM call(s)"
        + (f" ({', '.join(notes)})" if notes else "")
        + f", {sum(c.usage.prompt_tokens for c in calls)} prompt + "
        f"{sum(c.usage.completion_tokens for c in calls)} completion tokens, "
        + (f"{seconds:.2f} s in all steps, " if seconds is not None else "")
        + f"{len(fallbacks)} fallback(s)"
    )


# ---------------------------------------------------------------------- helpers


def _fields(value: Any) -> dict:
    """A model's fields (as typed values) or a dict's items; anything else has none."""
    if isinstance(value, BaseModel):
        return {name: getattr(value, name) for name in type(value).model_fields}
    return value if isinstance(value, dict) else {}


def _region_id(node_input: Any) -> str | None:
    """The region a ``check_region`` input asks about; None for any other node."""
    region = _fields(_fields(node_input).get("region"))
    return str(region["id"]) if region.get("id") else None


def _typed_output(output: Any) -> dict[str, Any]:
    """The output fields the panel shows, as state models; a malformed one is left out, never a broken page."""
    typed = {}
    for key, value in _fields(output).items():
        adapter = _OUTPUT_FIELDS.get(key)
        if adapter is None or value is None:
            continue
        try:
            typed[key] = adapter.validate_python(value)
        except ValidationError:
            continue
    return typed


def _answer_order(answer: RegionAnswer) -> tuple[int, int, str]:
    """By round, then rank (as the result lists them); an id not of the form "r<round>.<rank>" goes last."""
    try:
        return (*region_order(answer.round, answer.region_id), "")
    except ValueError:
        return answer.round, 1 << 30, answer.region_id


def _text(value: Any, limit: int = MAX_SHOWN_TEXT) -> str:
    """Untrusted text, clipped and escaped for HTML (attribute values included)."""
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return html.escape(text, quote=True)


def _capped(items: list, limit: int = MAX_SHOWN_ITEMS) -> tuple[list, int]:
    """The first ``limit`` items and how many were left out."""
    return list(items[:limit]), max(0, len(items) - limit)


def _more(hidden: int) -> str:
    return f" … {hidden} more" if hidden else ""


def _category(reasoning: ClassReasoning) -> str:
    return " → ".join(part for part in (reasoning.general_category, reasoning.sub_category) if part)


def _row(*cells: Any) -> str:
    return "<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in cells) + "</tr>"


def _table(headers: list[str], rows: list[str], hidden: int = 0) -> str:
    head = "<tr>" + "".join(f"<th>{_text(h)}</th>" for h in headers) + "</tr>"
    tail = f'<tr><td colspan="{len(headers)}">{_more(hidden)}</td></tr>' if hidden else ""
    return "<table>" + head + "".join(rows) + tail + "</table>"


def _section(name: str, title: str, body: str) -> str:
    return f'<section data-section="{name}"><h4>{_text(title)}</h4>{body}</section>'


def _swatch(colour) -> str:
    red, green, blue = (int(c) for c in colour)
    return f'<span class="openseg-swatch" style="background:#{red:02x}{green:02x}{blue:02x}"></span>'


def _fallbacks_html(fallbacks: list[Fallback]) -> str:
    if not fallbacks:
        return ""
    shown, hidden = _capped(fallbacks)
    items = [
        f"<li>{_text(f.step)}{' (' + _text(f.subject) + ')' if f.subject else ''}: {_text(f.reason)} "
        f"→ {_text(f.used)}</li>"
        for f in shown
    ]
    if hidden:
        items.append(f"<li>{_more(hidden)}</li>")
    return '<ul class="openseg-fallbacks">' + "".join(items) + "</ul>"
