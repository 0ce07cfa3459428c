"""``openseg-r runs report RUN -o report.html``: one self-contained HTML file.

Every picture is inlined as a data: URL, the style is inline, and the only script
checks that the pictures decoded; the page needs no network. A run that failed
halfway renders what it has and says where it stopped; a redacted run shows no
picture of the photo (only its hash, and the label map in colour).
"""

from __future__ import annotations

import base64
import html
import io
import time

import numpy as np
from PIL import Image

from openseg_r._support.render import class_colors, format_share, overlay_image
from openseg_r.graph.state import OpenSegState
from openseg_r.runs.inspect import RecordedRun
from openseg_r.schemas import region_order

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.5rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}\
td,th{border:1px solid #ddd;padding:.25rem .5rem;vertical-align:top;text-align:left}
img{max-width:100%;border:1px solid #ccc}.banner{padding:.6rem 1rem;border-radius:4px;margin:1rem 0}
.failed,.interrupted{background:#fde2e2}.done{background:#e3f4e3}.waiting{background:#fff4d6}.running{background:#e8eefc}
.bar{display:inline-block;height:.8rem;background:#4a7bd0}.muted{color:#777}\
.swatch{display:inline-block;width:1rem;height:1rem;border:1px solid #000;vertical-align:middle}
.pair{display:flex;gap:1rem;flex-wrap:wrap}.pair figure{margin:0}
"""
SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.every(function (img) { return img.complete && img.naturalWidth > 0; });
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-images-ok', ok ? 'yes' : 'no');
});
"""
MAX_PICTURE_SIDE = 900


def render_report(run: RecordedRun) -> str:
    record, state = run.record, run.state
    parts = [f"<h1>openseg-r run <code>{_e(record.run_id)}</code></h1>", _status(run)]
    parts.append(_section("input", "Input image", _input(run)))
    if state is not None:
        parts.append(_section("reasoning", "Image reasoning", _image_reasoning(state)))
        parts.append(_section("generic", "Generic reasoning (coarse to fine)", _generic(state)))
        parts.append(_section("alignment", "Class alignment", _alignment(state)))
        parts.append(_section("prompts", "Composed prompts", _prompts(state)))
        parts.append(_section("result", "Segmentation", _result(run)))
        parts.append(_section("confidence", "Per-class area and confidence", _confidence(state)))
        parts.append(_section("self-check", "Self-check", _self_check(run)))
        parts.append(_section("timeline", "Timeline", _timeline(state)))
    else:
        parts.append("<p>No state was checkpointed for this run.</p>")
    if run.missing:
        parts.append(
            _section(
                "missing", "Missing artifacts", "<ul>" + "".join(f"<li>{_e(m)}</li>" for m in run.missing) + "</ul>"
            )
        )
    body = "\n".join(parts)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>openseg-r run {_e(record.run_id[:12])}</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{body}"
        f"<p class=muted>Written {time.strftime('%Y-%m-%d %H:%M:%S')} by openseg-r.</p></body></html>"
    )


def _status(run: RecordedRun) -> str:
    record = run.record
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
    seconds = f"{record.seconds:.2f} s" if record.seconds is not None else "unfinished"
    text = (
        f"<b>{_e(record.status)}</b> · {when} · {seconds} · backend {_e(record.backend or 'none')} · "
        f"vocabulary {_e(record.vocabulary or '')} ({record.classes} classes)"
    )
    if record.parent_run:
        text += f" · replay of <code>{_e(record.parent_run)}</code> from {_e(record.replay_from)}"
    if record.status != "done":
        where = record.stopped_at or ", ".join(run.next_nodes) or "unknown"
        text += f"<br>The run stopped before: <b>{_e(where)}</b>."
        if record.error:
            text += f" Error: <code>{_e(record.error[:500])}</code>"
        text += " What it recorded up to there is shown below."
    return f"<div id=status class='banner {_e(record.status)}'>{text}</div>"


def _section(anchor: str, title: str, content: str) -> str:
    return f"<section id={anchor}><h2>{_e(title)}</h2>{content}</section>"


def _input(run: RecordedRun) -> str:
    key = run.record.image_key
    info = f"<p class=muted>{_e(run.record.image or 'image given as data')} · sha256 key {_e(key or '')}</p>"
    if run.record.redact:
        return info + "<p>Redacted: the image was not stored.</p>"
    rgb = run.array(key)
    return info + (_img(rgb, "input image") if rgb is not None else "<p>The image is missing from the store.</p>")


def _image_reasoning(state: OpenSegState) -> str:
    image = state.image_reasoning
    if not state.settings.reasoning:
        return "<p>Reasoning was off (bare class names).</p>"
    if image is None:
        return "<p>No image reasoning (it fell back, or the run stopped before it).</p>"
    rows = "".join(
        f"<tr><td>{_e(c.name)}</td><td>{_e(c.general_category)}</td><td>{_e(c.sub_category)}</td>"
        f"<td>{_e(', '.join(c.attributes))}</td></tr>"
        for c in image.candidates
    )
    return (
        f"<p><b>Description:</b> {_e(image.description)}</p>"
        "<table><tr><th>candidate</th><th>general category</th><th>sub-category</th>"
        f"<th>attributes in this image</th></tr>{rows}</table>"
    )


def _generic(state: OpenSegState) -> str:
    if not state.generic_reasoning:
        return "<p>None.</p>"
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(r.general_category)}</td><td>{_e(r.sub_category)}</td>"
        f"<td>{_e(', '.join(r.attributes))}</td></tr>"
        for name, r in state.generic_reasoning.items()
    )
    return f"<table><tr><th>class</th><th>general</th><th>sub</th><th>attributes</th></tr>{rows}</table>"


def _alignment(state: OpenSegState) -> str:
    alignment = state.alignment
    if alignment is None:
        return "<p>None.</p>"
    rows = "".join(
        f"<tr><td>{_e(d.raw)}</td><td>{_e(d.matched or '—')}</td><td>{_e(d.method)}</td>"
        f"<td>{'' if d.score is None else d.score}</td></tr>"
        for d in alignment.decisions
    )
    present = ", ".join(alignment.present) if alignment.present else "no class filtering"
    suppressed = ", ".join(state.segmentation.suppressed_classes) if state.segmentation else ""
    return (
        f"<p>Present: {_e(present)}</p>"
        f"<p class=muted>Suppressed by the class filter: {_e(suppressed or 'none')}</p>"
        f"<table><tr><th>LMM said</th><th>vocabulary class</th><th>how</th><th>score</th></tr>{rows}</table>"
    )


def _prompts(state: OpenSegState) -> str:
    if state.prompts is None:
        return "<p>Not composed.</p>"
    rows = "".join(
        f"<tr><td>{_e(c.name)}</td><td>{_e(c.source)}</td>"
        f"<td>{'<br>'.join(_e(p) for p in dict.fromkeys(sum(c.phrases(), [])))}</td></tr>"
        for c in state.prompts.classes
    )
    return (
        f"<p class=muted>templates: {_e(state.prompts.templates)}; order: {_e(state.prompts.score_order)}</p>"
        f"<table><tr><th>class</th><th>source</th><th>phrases</th></tr>{rows}</table>"
    )


def _picture(run: RecordedRun, labels: np.ndarray, box=None) -> Image.Image:
    names = run.state.vocabulary.names
    if run.record.redact:
        colours = np.vstack([class_colors(len(names)), [[128, 128, 128]]])
        picture = Image.fromarray(colours[np.where(labels < 0, len(names), labels)].astype(np.uint8))
    else:
        rgb = run.array(run.record.image_key)
        picture = overlay_image(rgb, labels, names) if rgb is not None and box is None else None
        if picture is None:
            base = rgb if rgb is not None else np.zeros((*labels.shape, 3), np.uint8)
            colours = np.vstack([class_colors(len(names)), [[128, 128, 128]]])
            tinted = colours[np.where(labels < 0, len(names), labels)].astype(np.float32)
            picture = Image.fromarray((base * 0.5 + tinted * 0.5).astype(np.uint8))
    if box is not None:
        picture = picture.crop(box)
    return picture


def _result(run: RecordedRun) -> str:
    labels = run.final_labels()
    if labels is None:
        return "<p>The run stopped before segmentation, or its label map is missing from the store.</p>"
    note = " (colours only: the run is redacted)" if run.record.redact else ""
    return f"<p>Final overlay with its legend{note}.</p>" + _img(_picture(run, labels), "overlay")


def _confidence(state: OpenSegState) -> str:
    if state.report is None:
        return "<p>Not finalized.</p>"
    colours = class_colors(len(state.vocabulary.names))
    rows = []
    for c in sorted(state.report.classes, key=lambda c: -c.pixels):
        if not c.pixels:
            continue
        colour = "#%02x%02x%02x" % tuple(int(v) for v in colours[c.index])
        confidence = c.mean_confidence or 0.0
        rows.append(
            f"<tr><td><span class=swatch style='background:{colour}'></span> {_e(c.name)}</td>"
            f"<td>{_e(format_share(c.area_fraction, 2, present=True))}</td>"
            f"<td><span class=bar style='width:{int(200 * confidence)}px'></span> {confidence:.3f}</td></tr>"
        )
    unknown = (
        f"<p>Unknown pixels (self-check): {state.report.unknown_pixels}</p>" if state.report.unknown_pixels else ""
    )
    return f"<table><tr><th>class</th><th>area</th><th>mean confidence</th></tr>{''.join(rows)}</table>{unknown}"


def _self_check(run: RecordedRun) -> str:
    state = run.state
    check = state.self_check
    if check is None:
        return "<p>The self-check did not run.</p>"
    before_labels = run.array(state.segmentation.labels_key)
    after_labels = run.array(check.output.labels_key)
    changes = {c.region_id: c for c in check.changes}
    regions = {r.id: r for rnd in check.rounds for r in rnd.regions}
    items = [
        f"<p>Stopped: {_e(check.stopped or 'still running')} · {check.calls_used} LMM call(s)"
        f"{' · the call budget ran out' if check.budget_exhausted else ''}</p>"
    ]
    for answer in sorted(state.region_answers, key=lambda a: region_order(a.round, a.region_id)):
        region, change = regions.get(answer.region_id), changes.get(answer.region_id)
        crop = (
            "<p>Crop redacted.</p>"
            if run.record.redact
            else _img(run.array(answer.crop_key), f"crop {answer.region_id}")
        )
        views = ""
        if region is not None and before_labels is not None and after_labels is not None:
            x0, y0, x1, y1 = region.box
            views = (
                f"<figure>{_img(_picture(run, before_labels, (x0, y0, x1, y1)), 'before')}"
                "<figcaption>before</figcaption></figure>"
                f"<figure>{_img(_picture(run, after_labels, (x0, y0, x1, y1)), 'after')}"
                "<figcaption>after</figcaption></figure>"
            )
        competing = " vs ".join(e.name for e in region.competing) if region else ""
        outcome = (
            f"{change.action}: {change.why}; {change.pixels_changed} pixel(s) from {change.from_classes}"
            if change
            else "no change recorded"
        )
        items.append(
            f"<div class=question><h3>{_e(answer.region_id)}: {_e(competing)}</h3>"
            f"<div class=pair><figure>{crop}<figcaption>what the {_e(answer.source)} saw</figcaption></figure>"
            f"{views}</div>"
            f"<p><b>Answer:</b> {_e(answer.verdict)} {_e(answer.choice or answer.raw_choice or '')} "
            f"(confidence {answer.confidence}); {_e(answer.reason)} {_e(answer.note)}</p>"
            f"<p><b>Change:</b> {_e(outcome)}</p>"
            f"<details><summary>question</summary><pre>{_e(answer.question)}</pre></details></div>"
        )
    return "".join(items)


def _timeline(state: OpenSegState) -> str:
    total = max(sum(t.seconds for t in state.timings), 1e-9)
    by_step: dict[str, list] = {}
    for call in state.lmm_calls:  # LMM steps are named after nodes, but for the self-check's questions
        by_step.setdefault("check_region" if call.step == "self_check" else call.step, []).append(call)
    rows = []
    for timing in state.timings:
        calls = by_step.get(timing.node, [])
        tokens = sum(c.usage.prompt_tokens + c.usage.completion_tokens for c in calls)
        rows.append(
            f"<tr><td>{_e(timing.node)}</td>"
            f"<td><span class=bar style='width:{max(1, int(300 * timing.seconds / total))}px'></span> "
            f"{timing.seconds:.3f} s</td><td>{len(calls) if calls else ''}</td><td>{tokens or ''}</td></tr>"
        )
        by_step.pop(timing.node, None)  # count a step's calls once, on its first line
    fallbacks = "".join(
        f"<li>{_e(f.step)} {_e(f.subject or '')}: {_e(f.reason)} → {_e(f.used)}</li>" for f in state.fallbacks
    )
    return (
        f"<table><tr><th>node</th><th>wall time</th><th>LMM calls</th><th>tokens</th></tr>{''.join(rows)}</table>"
        + (f"<p>Fallbacks:</p><ul>{fallbacks}</ul>" if fallbacks else "<p>No fallbacks.</p>")
    )


def _img(picture, alt: str) -> str:
    if picture is None:
        return f"<p class=muted>{_e(alt)}: missing from the store.</p>"
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    if max(picture.size) > MAX_PICTURE_SIDE:
        scale = MAX_PICTURE_SIDE / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="PNG")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _e(value) -> str:
    return html.escape(str(value), quote=True)
