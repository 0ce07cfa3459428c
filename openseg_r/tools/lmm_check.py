"""``openseg-r lmm check``: is a backend usable, before a long run finds out the hard way?

For a model behind a server or in process: can it be reached (``GET /models`` for an
OpenAI-compatible server), does the server list the model, and does it answer the two
questions a run asks, exactly as a run asks them: generic reasoning about a class
(``prompts.reasoning.GENERIC_REASONING``, schema ``ClassReasoning``) and image reasoning
about a small picture (``IMAGE_REASONING_SINGLE``, schema ``ImageReasoning``), each with
the backend's own re-asks. The verdict follows the rule a run ends by: a run exits 4 when
neither kind of reasoning comes back, so the backend is "not usable" exactly then.
For the offline kinds (``scripted``, ``replay``): does the file hold answers. ``none``
is never usable: it names no LMM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from openseg_r.lmm.base import BaseLMMBackend, LMMRequest, NoLMM, backend_label
from openseg_r.lmm.health import unavailable_message
from openseg_r.prompts.reasoning import GENERIC_REASONING, IMAGE_REASONING_SINGLE, class_list_text
from openseg_r.schemas import ClassReasoning, ImageReasoning

GENERIC_STEP, IMAGE_STEP = "generic_reasoning", "image_reasoning"  # as a run names them (scripts, replays)

CHECK_CLASSES = ("cat", "dog")  # what the check asks about: the photo below shows neither, which is fine
IMAGE_SIDE = 64


def check_picture() -> np.ndarray:
    """A small picture with something to describe: a red disc on a blue ground."""
    ys, xs = np.mgrid[:IMAGE_SIDE, :IMAGE_SIDE]
    picture = np.zeros((IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    picture[...] = (40, 80, 200)
    disc = (ys - IMAGE_SIDE / 2) ** 2 + (xs - IMAGE_SIDE / 2) ** 2 < (IMAGE_SIDE / 3) ** 2
    picture[disc] = (220, 30, 30)
    return picture


@dataclass
class BackendCheck:
    """The report: ``lines`` of (what, finding); ``problem`` is None when the backend is usable."""

    backend: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None

    def text(self) -> str:
        width = max([len("backend")] + [len(name) for name, _ in self.lines]) + 1
        rows = [("backend", self.backend), *self.lines]
        rows.append(("verdict", "usable" if self.usable else "not usable"))
        return "\n".join(f"{name + ':':<{width}} {finding}" for name, finding in rows)


def check_backend(backend: BaseLMMBackend) -> BackendCheck:
    """Run the checks that apply to ``backend``; never raises for a backend failure."""
    from openseg_r.lmm.replay import RecordingLMM, ReplayLMM
    from openseg_r.lmm.scripted import ScriptedLMM

    inner = backend.inner if isinstance(backend, RecordingLMM) else backend
    where = f" at {backend.location}" if backend.location else ""
    report = BackendCheck(backend=backend_label(backend) + where)
    if isinstance(inner, NoLMM):
        report.problem = "the spec 'none' names no LMM: reasoning would fall back to bare class names"
        return report
    if isinstance(inner, ScriptedLMM):
        return _check_script(inner, report)
    if isinstance(inner, ReplayLMM):
        return _check_replay(inner, report)
    if not _reachable(backend, report):
        return report
    _model_listed(inner, report)
    generic = _generic(backend, report)
    if generic is None:
        return report
    image = _image(backend, report)
    if image is not None:
        _verdict(report, generic, image)
    return report


def _reachable(backend: BaseLMMBackend, report: BackendCheck) -> bool:
    if backend.location is None:
        report.lines.append(("reachable", "in process (a local model, already loaded)"))
        return True
    started = time.perf_counter()
    cause = backend.probe()
    seconds = time.perf_counter() - started
    if cause is not None:
        report.lines.append(("reachable", f"no ({cause})"))
        report.problem = unavailable_message(cause, backend.location)
        return False
    backend.health.mark_up()
    report.lines.append(("reachable", f"yes ({seconds:.2f} s)"))
    return True


def _model_listed(inner, report: BackendCheck) -> None:
    listed = getattr(inner, "listed_models", None)
    if listed is None:
        if inner.location is not None:
            report.lines.append(("model", "the server lists no models (GET /models gave none)"))
        return
    if inner.model_id in listed:
        report.lines.append(("model", f"{inner.model_id} is listed"))
        return
    shown = ", ".join(listed[:5]) + (f" (+{len(listed) - 5} more)" if len(listed) > 5 else "")
    report.lines.append(("model", f"{inner.model_id} is not listed; the server lists: {shown or 'nothing'}"))


def _generic(backend: BaseLMMBackend, report: BackendCheck) -> bool | None:
    """True: valid generic reasoning; False: answered, but not usably; None: the backend is down."""
    name = CHECK_CLASSES[0]
    request = LMMRequest(
        step=GENERIC_STEP,
        subject=name,
        prompt=GENERIC_REASONING.render(class_name=name),
        prompt_version=GENERIC_REASONING.version,
        schema=ClassReasoning,
    )
    started = time.perf_counter()
    reply = backend.ask(request)
    seconds = time.perf_counter() - started
    if reply.unavailable:
        report.lines.append(("generic", f"no ({reply.unavailable})"))
        report.problem = reply.unavailable
        return None
    if reply.value is None:
        why = (reply.error or "no answer")[:160]
        report.lines.append(("generic", f"no valid answer in {seconds:.2f} s, {len(reply.calls)} attempt(s) ({why})"))
        return False
    tokens = f"{reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens"
    attributes = ", ".join(reply.value.attributes[:3])
    report.lines.append(
        (
            "generic",
            f"valid in {seconds:.2f} s ({tokens}): {name} is "
            f"{(reply.value.general_category or '?')[:40]!r}, {attributes[:80]!r}",
        )
    )
    return True


def _image(backend: BaseLMMBackend, report: BackendCheck) -> bool | None:
    if not backend.supports_images:
        report.lines.append(("image", "no: a text-only model (image reasoning and the self-check fall back)"))
        return False
    text = IMAGE_REASONING_SINGLE.render(class_list=class_list_text(list(CHECK_CLASSES)))
    request = LMMRequest(
        step=IMAGE_STEP,
        prompt=text,
        prompt_version=IMAGE_REASONING_SINGLE.version,
        schema=ImageReasoning,
        images=[check_picture()],
    )
    started = time.perf_counter()
    reply = backend.ask(request)
    seconds = time.perf_counter() - started
    if reply.unavailable:
        report.lines.append(("image", f"no ({reply.unavailable})"))
        report.problem = reply.unavailable
        return None
    if reply.value is None:
        why = (reply.error or "no answer")[:160]
        report.lines.append(
            (
                "image",
                f"no valid answer in {seconds:.2f} s, {len(reply.calls)} attempt(s) ({why}): "
                "image reasoning and the class filter would fall back",
            )
        )
        return False
    report.lines.append(("image", f"valid in {seconds:.2f} s: {reply.value.description[:80]!r}"))
    return True


def _verdict(report: BackendCheck, generic: bool, image: bool) -> None:
    if generic and image:
        return
    if generic:
        report.lines.append(("note", "runs get generic reasoning; image reasoning falls back (no class filter)"))
    elif image:
        report.lines.append(("note", "runs get image reasoning; generic reasoning falls back to bare class names"))
    else:
        report.problem = (
            "the model answered, but neither generic nor image reasoning came back as the JSON asked "
            "for: every run would fall back to bare class names (exit 4 without --allow-fallback)"
        )


def _check_script(script, report: BackendCheck) -> BackendCheck:
    from openseg_r.lmm.scripted import SUBJECT_KEYED_STEPS

    found = []
    for step in ("generic_reasoning", "image_reasoning", "self_check"):
        entry = script.script.get(step)
        if entry in (None, "", [], {}):
            continue
        count = f"{len(entry)} classes" if step in SUBJECT_KEYED_STEPS and isinstance(entry, dict) else "answers"
        found.append(f"{step} ({count})")
    report.lines.append(("reachable", "offline: answers from a script"))
    report.lines.append(("answers", ", ".join(found) or "none for generic_reasoning, image_reasoning or self_check"))
    if not found:
        report.problem = "the script holds no answer for generic_reasoning, image_reasoning or self_check"
    return report


def _check_replay(replay, report: BackendCheck) -> BackendCheck:
    report.lines.append(("reachable", f"offline: answers replayed from {replay.source}"))
    if replay._image_dir is not None:
        count = sum(1 for path in replay._image_dir.glob("*.json"))
        report.lines.append(("answers", f"{count} upstream per-image file(s)"))
    elif replay._generic:
        count = len(replay._generic)
        report.lines.append(("answers", f"upstream generic reasoning for {count} class(es)"))
    else:
        count = sum(len(answers) for answers in replay._answers.values())
        report.lines.append(("answers", f"{count} recorded answer(s)"))
    if not count:
        report.problem = f"{replay.source} holds no answer to replay"
    return report
