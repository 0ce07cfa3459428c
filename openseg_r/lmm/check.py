"""``openseg-r lmm check``: is a backend usable, before a long run finds out the hard way?

For a model behind a server or in process: can it be reached (``GET /models`` for an
OpenAI-compatible server), does the server list the model, does one tiny structured
question come back as valid JSON and how fast, and can it look at a small image.
For the offline kinds (``scripted``, ``replay``): does the file hold answers. ``none``
is never usable: it names no LMM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from openseg_r.lmm.base import BaseLMMBackend, LMMRequest, NoLMM, backend_label
from openseg_r.lmm.health import unavailable_message

CHECK_STEP = "lmm_check"
STRUCTURED_PROMPT = (
    'This is a connection test. Reply with only this JSON object and nothing else: {"answer": "ok"}'
)
IMAGE_PROMPT = (
    'What is the main colour of this image? Reply with only a JSON object and nothing else: '
    '{"colour": "<one word>"}'
)
IMAGE_SIDE = 32


class CheckAnswer(BaseModel):
    answer: str


class ImageAnswer(BaseModel):
    colour: str


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
    if not _structured(backend, report):
        return report
    _images(backend, report)
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


def _structured(backend: BaseLMMBackend, report: BackendCheck) -> bool:
    request = LMMRequest(step=CHECK_STEP, subject="structured", prompt=STRUCTURED_PROMPT,
                         prompt_version="check-v1", schema=CheckAnswer)
    started = time.perf_counter()
    reply = backend.ask(request, max_attempts=1)
    seconds = time.perf_counter() - started
    if reply.unavailable:
        report.lines.append(("structured", f"no ({reply.unavailable})"))
        report.problem = reply.unavailable
        return False
    if reply.value is None:
        report.lines.append(("structured", f"no valid JSON in {seconds:.2f} s ({(reply.error or '')[:160]})"))
        why = (reply.error or "no answer")[:160]
        report.problem = f"the model answered, but not with the JSON asked for ({why}); reasoning would fall back"
        return False
    tokens = f"{reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens"
    report.lines.append(("structured", f"valid JSON in {seconds:.2f} s ({tokens})"))
    return True


def _images(backend: BaseLMMBackend, report: BackendCheck) -> None:
    if not backend.supports_images:
        report.lines.append(("images", "no: a text-only model (image reasoning and the self-check fall back)"))
        return
    red = np.zeros((IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    red[..., 0] = 255
    request = LMMRequest(step=CHECK_STEP, subject="image", prompt=IMAGE_PROMPT, prompt_version="check-v1",
                         schema=ImageAnswer, images=[red])
    started = time.perf_counter()
    reply = backend.ask(request, max_attempts=1)
    seconds = time.perf_counter() - started
    answered = any(call.raw_text for call in reply.calls) or reply.value is not None
    if reply.value is not None:
        report.lines.append(("images", f"yes: a {IMAGE_SIDE}x{IMAGE_SIDE} red image is "
                                       f"{reply.value.colour[:40]!r} ({seconds:.2f} s)"))
    elif answered:
        report.lines.append(("images", f"it answered about an image in {seconds:.2f} s, but not with the JSON asked "
                                       "for"))
    else:
        report.lines.append(("images", f"no: {(reply.error or 'no answer')[:200]} (image reasoning and the "
                                       "self-check fall back)"))


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
