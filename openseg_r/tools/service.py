"""The one object behind every agent entry point (LangChain tool, MCP server, LangGraph
server): a loaded model, the safety limits, a bounded number of concurrent
segmentations, and the traces of recent calls for ``explain``.

>>> service = SegmentationService(OpenSegR(...), SafetyLimits(allowed_roots=["~/photos"]))
>>> output, overlay_png = service.segment(SegmentRequest(image_path="cat.jpg", vocabulary=["cat", "sofa"]))
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from openseg_r._support.cancel import CancelToken, result_unless_cancelled
from openseg_r._support.images import UNREADABLE, load_image
from openseg_r.errors import ImageError, OpenSegRError
from openseg_r.lmm.base import NoLMM
from openseg_r.model import OpenSegR
from openseg_r.prompts.templates import templates_for
from openseg_r.schemas import Vocabulary
from openseg_r.tools.output import MaskFormat, SegmentOutput, build_output, overlay_png_base64
from openseg_r.tools.safety import (
    SafetyLimits,
    ToolInputError,
    checked_vocabulary,
    decode_base64_image,
    fetch_image_url,
    read_image_path,
)
from openseg_r.vocab import builtin_names, load_builtin

T = TypeVar("T")
MAX_TRACES = 200
TRACE_RAW_TEXT = 600


class ToolBusyError(ToolInputError):
    """Every segmentation slot stayed busy for the whole queue wait."""


class ServiceCall(Generic[T]):
    """Work started by :meth:`SegmentationService.begin`: wait for it with :meth:`result`,
    or poll :attr:`future` (the web page streams events meanwhile)."""

    def __init__(self, service: "SegmentationService", future: Future, token: CancelToken) -> None:
        self.service, self.future, self.token = service, future, token
        self.started = time.monotonic()

    def seconds_left(self) -> float:
        return self.service.limits.call_timeout_s - (time.monotonic() - self.started)

    def result(self) -> T:
        """The work's result within the call's time limit, or one line: the time limit
        (the work is cancelled and ends at its next batch), cancellation, or the error."""
        limit = self.service.limits.call_timeout_s
        try:
            return result_unless_cancelled(self.future, self.token, timeout=max(0.0, self.seconds_left()))
        except FutureTimeout:
            self.token.cancel(f"the call passed its time limit of {limit:g} s")
            raise ToolInputError(
                f"the segmentation took longer than the limit of {limit:g} s and was abandoned; "
                "try a smaller image, a smaller vocabulary, or reasoning off"
            ) from None
        except OpenSegRError as exc:
            raise ToolInputError(str(exc)) from None
        finally:
            self.service._forget(self.token)


class SegmentRequest(BaseModel):
    """The arguments of ``segment``: exactly one image source, and a vocabulary. Unknown
    arguments are refused, not ignored: a misspelt option must not pass silently."""

    model_config = ConfigDict(extra="forbid")

    image_path: str | None = Field(
        None,
        description="path of an image file under the server's allowed folders (relative to the first one, or absolute)",
    )
    image_base64: str | None = Field(None, description="the image file's bytes, base64-encoded (a data: URL is fine)")
    image_url: str | None = Field(None, description="an http(s) URL of the image, if the server allows URLs")
    vocabulary: list[str] | str = Field(
        description='the class names to look for, e.g. ["cat", "sofa|couch"] ("|" joins synonyms), '
        'or a built-in vocabulary name such as "voc21", "ade150", "coco_stuff171"'
    )
    reasoning: bool = Field(
        True, description="let the LMM reason about the classes and the image first (slower, better)"
    )
    self_check: bool = Field(False, description="ask the LMM again about regions where the segmenter is unsure")
    masks: MaskFormat = Field(
        "rle", description="rle: a COCO RLE mask per class; png: one label-map PNG; none: summary only"
    )
    instances: bool = Field(
        False,
        description="also return the objects found, best first (class, phrase, score, box, COCO RLE mask; at most "
        "50), when the server's segmenter finds instances (sam3)",
    )
    panoptic: bool = Field(
        False,
        description="also return panoptic segments: each object of a thing class and each stuff region (class, "
        "isthing, area, box, score, COCO RLE mask; at most 100, largest first); with any segmenter",
    )

    @model_validator(mode="after")
    def _one_image(self) -> "SegmentRequest":
        given = [name for name in ("image_path", "image_base64", "image_url") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError("give exactly one of image_path, image_base64 or image_url")
        return self


class SegmentationService:
    def __init__(self, model: OpenSegR, limits: SafetyLimits | None = None) -> None:
        self.model = model
        self.limits = limits or SafetyLimits()
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent)
        self._calls: set[CancelToken] = set()  # the cancel tokens of the calls being waited for
        self._running = 0  # segmentations whose work has not ended (abandoned ones included)
        self._state = threading.Condition()  # guards both, and says when the work ends
        self._stopping: str | None = None  # why every call is refused (set by stop())
        self._traces: OrderedDict[str, dict] = OrderedDict()
        self._traces_lock = threading.Lock()

    # ------------------------------------------------------------------ segment

    def segment(self, request: SegmentRequest | dict, graph_config: dict | None = None) -> tuple[SegmentOutput, str]:
        """(structured output, overlay PNG as base64). Raises :class:`ToolInputError`
        (or :class:`ToolBusyError`) with a message for the agent. ``graph_config`` is
        passed to the graph (a parent graph's config, when called from one of its nodes)."""
        if isinstance(request, dict):
            request = _validated(request)
        if self._stopping is not None:
            raise ToolInputError(f"{self._stopping}; no new segmentations are started")
        vocabulary = checked_vocabulary(request.vocabulary, self.limits)
        self.check_text_budget(vocabulary)
        rgb = self._load_image(request)
        has_lmm = not isinstance(self.model.lmm, NoLMM)
        notes = []
        if (request.reasoning or request.self_check) and not has_lmm:
            notes.append("no LMM is configured on this server: reasoning and self-check were turned off")
        settings = {
            "reasoning": request.reasoning and has_lmm,
            "self_check": {"enabled": request.self_check and has_lmm, "mode": "lmm"},
        }
        call = self.begin(
            lambda token: self.model.segment(rgb, vocabulary, graph_config=graph_config, cancel=token, **settings)
        )
        result = call.result()
        trace_id = uuid.uuid4().hex[:16]
        output = build_output(
            result, trace_id, request.masks, notes, instances=request.instances, panoptic=request.panoptic
        )
        self._remember(trace_id, result)
        return output, overlay_png_base64(result)

    async def asegment(self, request: SegmentRequest | dict) -> tuple[SegmentOutput, str]:
        return await asyncio.to_thread(self.segment, request)

    def check_text_budget(self, vocabulary: Vocabulary) -> None:
        """Refuse, before any work, a vocabulary whose text costs more than
        ``max_text_sentences``: its distinct names and synonyms x the templates of the
        model's template set. Prompts composed by reasoning add at most ``n_attributes``
        phrases per name; they cannot be counted before the LMM answers."""
        phrases = len({query for cls in vocabulary.classes for query in cls.queries})
        templates = len(templates_for(self.model.settings.templates))
        cost, limit = phrases * templates, self.limits.max_text_sentences
        if cost > limit:
            raise ToolInputError(
                f"the vocabulary costs {cost:,} text sentences to encode ({phrases:,} names and synonyms x "
                f"{templates} templates), over the limit of {limit:,}; use fewer classes or synonyms"
            )

    def stop(self, reason: str = "the server is stopping") -> None:
        """Cancel every call in flight (its work ends at its next batch) and refuse new ones."""
        with self._state:
            self._stopping = reason
            calls = list(self._calls)
        for token in calls:
            token.cancel(reason)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no segmentation's work is running (abandoned work included); False after ``timeout``."""
        with self._state:
            return self._state.wait_for(lambda: self._running == 0, timeout)

    def begin(self, work: Callable[[CancelToken], T]) -> "ServiceCall[T]":
        """Start ``work(token)`` in a daemon thread of its own, holding a segmentation slot
        until it really ends: the one way every entry point (the tools, the web app) runs
        work on the model. Refused in one line while stopping, or when every slot stays busy
        for ``queue_timeout_s``. :meth:`stop` and the call's time limit cancel the token."""
        if self._stopping is not None:
            raise ToolInputError(f"{self._stopping}; no new segmentations are started")
        if not self._slots.acquire(timeout=self.limits.queue_timeout_s):
            raise ToolBusyError(
                f"the server is busy: all {self.limits.max_concurrent} segmentation slot(s) stayed in use for "
                f"{self.limits.queue_timeout_s:g} s; try again later"
            )
        token = self._follow(CancelToken())
        future: Future = Future()

        def run() -> None:
            future.set_running_or_notify_cancel()
            try:
                future.set_result(work(token))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                self._work_ended()

        with self._state:
            self._running += 1
        try:
            threading.Thread(target=run, name="openseg-r-call", daemon=True).start()
        except BaseException:
            self._work_ended()
            self._forget(token)
            raise
        return ServiceCall(self, future, token)

    def _follow(self, token: CancelToken) -> CancelToken:
        with self._state:
            self._calls.add(token)
            stopping = self._stopping
        if stopping is not None:
            token.cancel(stopping)
        return token

    def _forget(self, token: CancelToken) -> None:
        with self._state:
            self._calls.discard(token)

    def _work_ended(self) -> None:
        self._slots.release()
        with self._state:
            self._running -= 1
            self._state.notify_all()

    def _load_image(self, request: SegmentRequest):
        if request.image_path:
            return self.decode_image(read_image_path(request.image_path, self.limits), "the file at image_path")
        if request.image_base64:
            return self.decode_image(decode_base64_image(request.image_base64, self.limits), "image_base64")
        return self.decode_image(fetch_image_url(request.image_url, self.limits), "the file at image_url")

    def decode_image(self, data: bytes, subject: str = "the image"):
        """An image file's bytes as RGB pixels, within the pixel limit; one line if not, that
        names ``subject`` (what the caller sent: "the image", "the file at image_path")."""
        try:
            return load_image(data, max_pixels=self.limits.max_pixels)
        except ImageError as exc:
            text = str(exc)
            if text.startswith(UNREADABLE):
                text = f"{subject} is not an image file, or is in a format PIL cannot read"
            raise ToolInputError(text.replace("<bytes>", subject)) from None

    # ------------------------------------------------------------------ explain

    def _remember(self, trace_id: str, result) -> None:
        trace = result.to_json()
        trace.pop("prompts", None)
        trace["vocabulary"] = {"name": trace["vocabulary"]["name"], "classes": len(trace["vocabulary"]["classes"])}
        for call in trace["lmm_calls"]:
            call["raw_text"] = call["raw_text"][:TRACE_RAW_TEXT]
        trace["trace_id"] = trace_id
        with self._traces_lock:
            self._traces[trace_id] = trace
            while len(self._traces) > MAX_TRACES:
                self._traces.popitem(last=False)

    def explain(self, trace_id: str) -> dict:
        """The reasoning, alignment, self-check steps, LMM usage and fallbacks of a recent call."""
        with self._traces_lock:
            trace = self._traces.get(str(trace_id).strip())
        if trace is None:
            raise ToolInputError(
                f"no trace with id {str(trace_id)[:40]!r}; this server keeps the last {MAX_TRACES} calls"
            )
        return trace

    @staticmethod
    def list_vocabularies() -> list[dict]:
        return [
            {"name": name, "classes": len(vocab.classes), "examples": vocab.names[:8]}
            for name, vocab in ((name, load_builtin(name)) for name in builtin_names())
        ]


def _validated(arguments: dict) -> SegmentRequest:
    """The request, or one line that names what is wrong (never pydantic's multi-line dump)."""
    from pydantic import ValidationError

    from openseg_r.errors import describe_validation_error

    refuse_unknown_arguments(arguments, SegmentRequest.model_fields)
    try:
        return SegmentRequest.model_validate(arguments)
    except ValidationError as exc:
        raise ToolInputError(f"invalid arguments: {describe_validation_error(exc)}") from None


def refuse_unknown_arguments(arguments: dict, known) -> None:
    """Refuse arguments a tool does not take, naming the ones it does."""
    from openseg_r.errors import clipped

    unknown = [str(name) for name in arguments if name not in known]
    if unknown:
        shown = ", ".join(repr(clipped(name, 20)) for name in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        accepted = ", ".join(known) or "none"
        raise ToolInputError(f"unknown argument(s): {shown}; this tool takes: {accepted}")


TOOL_DESCRIPTION = (
    "Segment an image into regions of the classes you name (open-vocabulary semantic segmentation). "
    "Use it when you need to know WHERE things are in an image, or how much of it they cover: "
    "which pixels are road vs sidewalk, how much of a photo is sky, whether there is a cat on the sofa. "
    "Give one image (image_path under the allowed folders, image_base64, or image_url if allowed) and the "
    "vocabulary: the class names to look for, or a built-in vocabulary name (see list_vocabularies). "
    "With reasoning on, a multimodal model first reasons about each class and the image, which is slower "
    "but more accurate; self_check re-asks it about ambiguous regions. "
    "Returns a short summary (classes found, their share of the image, one reason each), an overlay image "
    "with a legend, per-class masks as COCO RLE (or a label-map PNG), and a trace_id for `explain`."
)
