"""The page: upload an image, name classes, watch the graph reason node by node, answer
the human self-check by clicking, download the result, and open recorded runs' reports
beside their bare-name baseline.

Everything the page sends is untrusted, as an agent's call is: the image and the
vocabulary go through the MCP tool's checks (:mod:`openseg_r.tools.safety`), the work
runs in the service's slots with its time limit, and every refusal or failure is one
line in the page (``#status``), after which the page goes on working.
"""

from __future__ import annotations

import html
import re
import shutil
import time
from pathlib import Path

import gradio as gr
import numpy as np

from openseg_r._support.render import overlay_image
from openseg_r.errors import OpenSegRError
from openseg_r.lmm.base import NoLMM
from openseg_r.tools.safety import ToolInputError, checked_vocabulary, decode_base64_image
from openseg_r.tools.service import SegmentationService
from openseg_r.tools.web.backends import BackendChoices
from openseg_r.tools.web.compare import BASELINE_SETTINGS, comparison_html
from openseg_r.tools.web.guard import UploadRefused, read_upload
from openseg_r.tools.web.live import LiveRun, LiveRuns, write_downloads
from openseg_r.tools.web.trace import TRACE_CSS, result_html
from openseg_r.vocab import builtin_names

EXAMPLES = Path(__file__).parent / "examples"
SELF_CHECK_MODES = ["off", "LMM", "human"]
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
YIELD_EVERY_S = 0.15  # the trace is re-sent at most this often while events arrive
KEPT_DOWNLOADS = 64  # result folders kept on disk; older ones are deleted
PAGE_CSS = (
    TRACE_CSS
    + """
#status .openseg-error{background:#fde2e2;border:1px solid #e0a0a0;padding:.4rem .6rem;border-radius:4px}
#status .openseg-note{background:#fff4d6;padding:.4rem .6rem;border-radius:4px}
#status .openseg-done{background:#e3f4e3;padding:.4rem .6rem;border-radius:4px}
"""
)


class WebApp:
    """The server side of the page: the service (model, limits, slots), the backends a page
    may pick, the runs pages are following, and where their downloads are written."""

    def __init__(
        self, service: SegmentationService, backends: BackendChoices, downloads: Path, *, runs: LiveRuns | None = None
    ) -> None:
        self.service, self.backends = service, backends
        self.downloads = Path(downloads)
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.runs = runs or LiveRuns()
        self.runs_db = service.model.runs_db
        self.upload_folder = upload_folder()

    # ------------------------------------------------------------------ inputs

    def read_upload(self, payload: dict | None) -> tuple[bytes, str]:
        """The uploaded file's bytes and name, within the file-size limit. ``payload`` is the
        image component's raw value, sent by the browser: its path must name a regular file
        in Gradio's upload folder (a forged path to another file is refused like a missing
        one, without being opened: :mod:`openseg_r.tools.web.guard`)."""
        limits = self.service.limits
        payload = payload if isinstance(payload, dict) else {}
        url, value = payload.get("url"), payload.get("path")
        if isinstance(url, str) and url.startswith("data:"):
            try:
                return decode_base64_image(url, limits), "pasted image"
            except ToolInputError as exc:  # the tool's words name its argument; here it is a paste
                raise ToolInputError(str(exc).replace("image_base64", "the pasted image")) from None
        if not isinstance(value, str) or not value:
            raise ToolInputError("upload an image first (or pick the example below it)")
        try:  # the same rule the server's UploadGuard applied before Gradio saw the request
            return read_upload(value, self.upload_folder, limits.max_file_bytes)
        except UploadRefused as exc:
            raise ToolInputError(str(exc)) from None

    def prepare(
        self, image: dict | None, classes: str, backend: str, reasoning: bool, self_check: str, record: bool
    ) -> tuple[LiveRun, list[str]]:
        """A live run of checked inputs, and notes on settings the server changed; one line if refused."""
        if not (classes or "").strip():
            raise ToolInputError(
                "name at least one class (comma-separated, '|' between synonyms), "
                "or a built-in vocabulary such as voc21"
            )
        vocabulary = checked_vocabulary(classes, self.service.limits)
        self.service.check_text_budget(vocabulary)
        if self_check not in SELF_CHECK_MODES:
            raise ToolInputError(f"the self-check is one of: {', '.join(SELF_CHECK_MODES)}")
        model = self.backends.model_for(backend)
        data, name = self.read_upload(image)
        rgb = self.service.decode_image(data)
        has_lmm = not isinstance(model.lmm, NoLMM)
        notes = []
        if reasoning and not has_lmm:
            notes.append("no LMM backend chosen: reasoning is off")
        if self_check == "LMM" and not has_lmm:
            notes.append("no LMM backend chosen: the LMM self-check is off")
        check = {
            "enabled": self_check == "human" or (self_check == "LMM" and has_lmm),
            "mode": "human" if self_check == "human" else "lmm",
        }
        settings = {"reasoning": bool(reasoning) and has_lmm, "self_check": check}
        live = LiveRun(
            self.service,
            model,
            rgb,
            vocabulary,
            settings,
            record=bool(record) and self.runs_db is not None,
            image_name=name,
        )
        return self.runs.add(live), notes

    # ------------------------------------------------------------------ outputs

    def finish(self, live: LiveRun) -> list[str]:
        """The download files of a finished run (older runs' files are deleted)."""
        if live.result is None:
            return []
        folder = self.downloads / live.id
        paths = write_downloads(live.result, folder)
        self._prune()
        kept = ("labels", "overlay", "result", "masks", "instances", "panoptic", "panoptic_json", "panoptic_overlay")
        return [str(paths[key]) for key in kept if key in paths]

    def _prune(self) -> None:
        """Keep the newest KEPT_DOWNLOADS folders; a folder another run's prune removed meanwhile is skipped."""

        def modified(folder: Path) -> float:
            try:
                return folder.stat().st_mtime
            except OSError:
                return 0.0

        folders = sorted((p for p in self.downloads.iterdir() if p.is_dir()), key=modified)
        for old in folders[:-KEPT_DOWNLOADS]:
            shutil.rmtree(old, ignore_errors=True)

    def baseline(self, rgb: np.ndarray, vocabulary) -> np.ndarray:
        """The bare-name baseline's label map for the same image and classes."""
        model = self.backends.model_for(self.backends.default)
        call = self.service.begin(
            lambda token: model.segment(rgb, vocabulary, record=False, cancel=token, **BASELINE_SETTINGS)
        )
        return call.result().labels

    # ------------------------------------------------------------------ recorded runs

    def recorded_runs_html(self) -> str:
        if self.runs_db is None:
            return "<p>This server does not record runs (start it with --record or --runs-db).</p>"
        records = self.runs_db.list_runs(50)
        if not records:
            return "<p>No recorded runs yet: run one with “Record this run” ticked.</p>"
        rows = []
        for record in records:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            run_id = html.escape(record.run_id)
            rows.append(
                f"<tr data-run='{run_id}'><td><code>{run_id[:12]}</code></td><td>{when}</td>"
                f"<td>{html.escape(record.status)}</td><td>{html.escape(Path(record.image or '').name)}</td>"
                f"<td>{html.escape((record.vocabulary or '')[:60])}</td>"
                f"<td>{html.escape(record.backend or 'none')}</td>"
                f"<td><a href='openseg/report/{run_id}' target='_blank' data-report='{run_id}'>report</a></td></tr>"
            )
        return (
            "<table data-section='recorded'><tr><th>run</th><th>started</th><th>status</th><th>image</th>"
            f"<th>classes</th><th>LMM</th><th></th></tr>{''.join(rows)}</table>"
        )

    def recorded_choices(self) -> list[tuple[str, str]]:
        if self.runs_db is None:
            return []
        return [
            (f"{r.run_id[:12]} · {Path(r.image or '').name} · {r.status}", r.run_id)
            for r in self.runs_db.list_runs(50)
            if r.status == "done"
        ]

    def recorded_labels(self, run_id: str):
        """(image, vocabulary, final labels) of a finished recorded run."""
        from openseg_r.runs.inspect import load_run

        if self.runs_db is None:
            raise ToolInputError("this server does not record runs")
        if not RUN_ID.match(str(run_id or "")):
            raise ToolInputError("choose a recorded run first")
        run = load_run(self.runs_db, run_id, self.backends.model.graph)
        if run.record.redact:
            raise ToolInputError(
                "this run was recorded with --redact: its image is not kept, so there is nothing to run the baseline on"
            )
        labels = run.final_labels()
        rgb = run.array(run.record.image_key)
        if run.state is None or labels is None or rgb is None:
            raise ToolInputError("this run has no finished label map or image in the store")
        return rgb, run.state.vocabulary, labels


def upload_folder() -> str:
    """Where Gradio keeps uploads (and its copies of the examples): ``GRADIO_TEMP_DIR``."""
    from gradio.utils import get_upload_folder

    return get_upload_folder()


# ---------------------------------------------------------------------- the page


def status_html(live: LiveRun | None = None, error: str | None = None, notes: list[str] | None = None) -> str:
    """One line: the error, else where the run is."""
    if error is not None:
        return f"<div class='openseg-error' role='alert'>{html.escape(error)}</div>"
    parts = [f"<div class='openseg-note'>{html.escape(note)}</div>" for note in notes or []]
    if live is None:
        return "".join(parts)
    if live.error is not None:
        return f"<div class='openseg-error' role='alert'>{html.escape(live.error)}</div>" + "".join(parts)
    if live.result is not None:
        seconds = sum(t.seconds for t in live.result.state.timings)
        recorded = f" · recorded as {live.run_id[:12]}" if live.run_id else ""
        parts.insert(
            0,
            f"<div class='openseg-done' data-state='done'>done: {len(live.result.present)} class(es) "
            f"found in {seconds:.1f} s of graph time{recorded}</div>",
        )
    elif live.questions:
        parts.insert(
            0,
            f"<div class='openseg-note' data-state='paused'>the self-check asks you about "
            f"{len(live.questions)} region(s): answer below, in any order</div>",
        )
    else:
        line = live.trace.status_line() or "starting"
        parts.insert(0, f"<div data-state='running'>running: {html.escape(line)}</div>")
    return "".join(parts)


def build_blocks(web: WebApp) -> gr.Blocks:
    has_runs = web.runs_db is not None
    example = EXAMPLES / "voc.jpg"
    with gr.Blocks(title="openseg-r", analytics_enabled=False) as blocks:
        gr.Markdown(
            "# openseg-r\nOpen-vocabulary segmentation guided by step-by-step visual reasoning: an LMM "
            "reasons about each class and this image, the reasons become prompts for a CLIP segmenter, "
            "and you can watch every step."
        )
        live_id = gr.State(None)
        questions = gr.State([])
        with gr.Tab("Segment"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(
                        label="Image",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        elem_id="image",
                    )
                    if example.is_file():
                        gr.Examples([[str(example)]], inputs=[image], label="Example", elem_id="examples")
                    classes = gr.Textbox(
                        label="Classes",
                        elem_id="classes",
                        lines=2,
                        placeholder="cat, sofa|couch, lamp  (or a built-in: voc21, ade150, ...)",
                        info="comma-separated; '|' joins synonyms; or a built-in vocabulary name",
                    )
                    builtin = gr.Dropdown(
                        builtin_names(), label="or pick a built-in vocabulary", value=None, elem_id="builtin"
                    )
                    backend = gr.Dropdown(
                        web.backends.choices,
                        value=web.backends.default,
                        label="LMM backend",
                        allow_custom_value=web.backends.allow_any,
                        elem_id="backend",
                    )
                    reasoning = gr.Checkbox(value=True, label="Reasoning (the LMM reasons first)", elem_id="reasoning")
                    self_check = gr.Radio(SELF_CHECK_MODES, value="off", label="Self-check", elem_id="self-check")
                    record = gr.Checkbox(value=has_runs, label="Record this run", visible=has_runs, elem_id="record")
                    run_button = gr.Button("Segment", variant="primary", elem_id="run")
                with gr.Column(scale=2):
                    status = gr.HTML(elem_id="status")
                    overlay = gr.Image(label="Overlay", type="pil", format="png", interactive=False, elem_id="overlay")
                    legend = gr.HTML(elem_id="legend")

                    @gr.render(inputs=[live_id, questions])
                    def show_questions(run_id, pending):
                        if not pending:
                            return
                        live = web.runs.get(run_id)
                        gr.Markdown("### The self-check asks you")
                        for question in pending:
                            region = question["region_id"]
                            with gr.Column(
                                elem_classes=["question"], elem_id=f"question-{_slug(region)}", variant="panel"
                            ):
                                gr.Markdown(question_text(question))
                                with gr.Row():
                                    gr.Image(
                                        live.crop(question),
                                        label="the region, outlined",
                                        format="png",
                                        interactive=False,
                                        height=220,
                                    )
                                    context = live.crop(question, "context_key")
                                    if context is not None:
                                        gr.Image(
                                            context, label="where it is", format="png", interactive=False, height=220
                                        )
                                confidence = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="your confidence")
                                with gr.Row():
                                    for choice in question["choices"]:
                                        button = gr.Button(choice, size="sm", elem_classes=["choice"])
                                        button.click(
                                            _answer_handler(web, region, choice),
                                            inputs=[live_id, confidence],
                                            outputs=step_outputs,
                                            show_progress="minimal",
                                            concurrency_limit=None,
                                            api_visibility="private",
                                        )

                    trace = gr.HTML(elem_id="trace")
                    report_link = gr.HTML(elem_id="report-link")
                    downloads = gr.File(
                        label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                    )
                    compare_button = gr.Button("Compare with the bare-name baseline", visible=False, elem_id="compare")
            with gr.Row(visible=False, elem_id="comparison") as comparison:
                left = gr.Image(
                    label="with reasoning", type="pil", format="png", interactive=False, elem_id="compare-run"
                )
                right = gr.Image(
                    label="bare names (reasoning off)",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="compare-baseline",
                )
            comparison_table = gr.HTML(elem_id="comparison-table")
        with gr.Tab("Recorded runs", visible=has_runs, elem_id="runs-tab") as runs_tab:
            refresh = gr.Button("Refresh", elem_id="refresh-runs")
            recorded = gr.HTML(elem_id="recorded-runs")
            recorded_run = gr.Dropdown([], label="a finished recorded run", elem_id="recorded-run")
            recorded_compare = gr.Button("Compare it with the bare-name baseline", elem_id="compare-recorded")
            recorded_status = gr.HTML(elem_id="recorded-status")
            with gr.Row():
                recorded_left = gr.Image(
                    label="recorded run", type="pil", format="png", interactive=False, elem_id="recorded-left"
                )
                recorded_right = gr.Image(
                    label="bare names (reasoning off)",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="recorded-right",
                )
            recorded_table = gr.HTML(elem_id="recorded-table")

        step_outputs = [status, trace, overlay, legend, questions, downloads, report_link, compare_button, live_id]

        def on_run(image_value, classes_value, backend_value, reasoning_value, self_check_value, record_value):
            try:
                live, notes = web.prepare(
                    image_value, classes_value, backend_value, reasoning_value, self_check_value, record_value
                )
            except OpenSegRError as exc:
                yield _refused(str(exc))
                return
            yield from _follow(web, live, live.start(), notes)

        # preprocess=False: the upload reaches openseg-r's own checks undecoded (Gradio would open
        # a bad file itself and answer with its own error), and its path is checked here.
        run_button.click(
            on_run,
            inputs=[image, classes, backend, reasoning, self_check, record],
            outputs=step_outputs,
            concurrency_limit=None,
            api_visibility="private",
            show_progress="minimal",
            preprocess=False,
        )
        builtin.change(lambda name: name or gr.skip(), inputs=[builtin], outputs=[classes], api_visibility="private")

        def on_compare(run_id):
            try:
                live = web.runs.get(run_id)
                if live.result is None:
                    raise ToolInputError("finish a run first")
                baseline = web.baseline(live.rgb, live.vocabulary)
            except OpenSegRError as exc:
                return status_html(error=str(exc)), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            names = live.result.names
            return (
                gr.skip(),
                gr.Row(visible=True),
                live.result.overlay(),
                overlay_image(live.rgb, baseline, names),
                comparison_html(names, live.result.labels, baseline),
            )

        compare_button.click(
            on_compare,
            inputs=[live_id],
            outputs=[status, comparison, left, right, comparison_table],
            api_visibility="private",
            concurrency_limit=None,
        )

        def on_refresh():
            return web.recorded_runs_html(), gr.Dropdown(choices=web.recorded_choices(), value=None)

        refresh.click(on_refresh, outputs=[recorded, recorded_run], api_visibility="private")
        runs_tab.select(on_refresh, outputs=[recorded, recorded_run], api_visibility="private")

        def on_compare_recorded(run_id):
            try:
                rgb, vocabulary, labels = web.recorded_labels(run_id)
                baseline = web.baseline(rgb, vocabulary)
            except OpenSegRError as exc:
                return status_html(error=str(exc)), gr.skip(), gr.skip(), gr.skip()
            names = vocabulary.names
            return (
                "",
                overlay_image(rgb, labels, names),
                overlay_image(rgb, baseline, names),
                comparison_html(names, labels, baseline),
            )

        recorded_compare.click(
            on_compare_recorded,
            inputs=[recorded_run],
            outputs=[recorded_status, recorded_left, recorded_right, recorded_table],
            api_visibility="private",
            concurrency_limit=None,
        )
    return blocks


def _answer_handler(web: WebApp, region: str, choice: str):
    def on_answer(run_id, confidence):
        try:
            live = web.runs.get(run_id)
        except OpenSegRError as exc:
            yield _refused(str(exc))
            return
        yield from _follow(web, live, live.answer(region, choice, confidence), [])

    return on_answer


def _follow(web: WebApp, live: LiveRun, steps, notes: list[str]):
    """Page updates while a step runs (the trace, at most every YIELD_EVERY_S), then the
    step's outcome: the overlay and downloads, the questions, or the one-line error."""
    last = 0.0
    for _ in steps:
        now = time.monotonic()
        if now - last >= YIELD_EVERY_S:
            last = now
            yield (
                status_html(live, notes=notes),
                live.trace.html(),
                gr.skip(),
                gr.skip(),
                gr.skip(),
                gr.skip(),
                gr.skip(),
                gr.skip(),
                live.id,
            )
    result = live.result
    picture, legend, files, link = None, "", None, ""
    if result is not None:
        picture, legend = result.overlay(outlines=bool(result.instances)), result_html(result)
        try:
            files = web.finish(live)
        except OSError as exc:
            live.error = f"the result could not be written for download: {exc.strerror or exc}"
    elif live.questions:
        labels = live.segmenter_labels()
        if labels is not None:
            picture = overlay_image(live.rgb, labels, live.vocabulary.names)
            legend = "<p class='muted'>The segmenter's labels, before your answers.</p>"
    if live.run_id:
        link = (
            f"<a href='openseg/report/{live.run_id}' target='_blank' data-report='{live.run_id}'>"
            "open this run's report</a>"
        )
    trace = live.trace.html(cache=result.reasoning_cache if result is not None else None)
    yield (
        status_html(live, notes=notes),
        trace,
        picture,
        legend,
        live.questions,
        files,
        link,
        gr.Button(visible=result is not None),
        live.id,
    )


def _refused(message: str):
    return (status_html(error=message), "", None, "", [], None, "", gr.Button(visible=False), None)


def question_text(question: dict) -> str:
    """What a person is asked: which class the outlined region is, with how sure the segmenter was."""
    evidence = [e for e in question.get("evidence") or [] if isinstance(e, dict)]
    unsure = " and ".join(
        f"**{html.escape(str(e.get('name', ''))[:60])}** ({float(e.get('top1_share', 0.0)):.0%} of its pixels)"
        for e in evidence[:4]
    )
    return (
        f"**Region {html.escape(str(question.get('region_id', '')))}** (round {question.get('round', '?')}): "
        f"which class is the region outlined in magenta? The segmenter hesitates between {unsure}. "
        "Choose one, or “none of these”."
    )


def _slug(region_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", str(region_id))
