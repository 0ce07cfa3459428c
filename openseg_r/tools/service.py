"""The one object behind every agent entry point (LangChain tool, MCP server, LangGraph
server): a loaded model, the safety limits, a bounded number of concurrent
segmentations, and the traces of recent calls for ``explain``.

>>> service = SegmentationService(OpenSegR(...), SafetyLimits(allowed_roots=["~/photos"]))
>>> output, overlay_png = service.segment(SegmentRequest(image_path="cat.jpg", vocabulary=["cat", "sofa"]))
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from pydantic import BaseModel, Field, model_validator

from openseg_r.errors import ImageError, OpenSegRError
from openseg_r.facade import OpenSegR
from openseg_r.images import load_image
from openseg_r.lmm.base import NoLMM
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

MAX_TRACES = 200
TRACE_RAW_TEXT = 600


class ToolBusyError(ToolInputError):
    """Every segmentation slot stayed busy for the whole queue wait."""


class SegmentRequest(BaseModel):
    """The arguments of ``segment``: exactly one image source, and a vocabulary."""

    image_path: str | None = Field(
        None,
        description="path of an image file under the server's allowed folders "
        "(relative to the first one, or absolute)",
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
        self._workers = ThreadPoolExecutor(max_workers=self.limits.max_concurrent, thread_name_prefix="openseg-r")
        self._traces: OrderedDict[str, dict] = OrderedDict()
        self._traces_lock = threading.Lock()

    # ------------------------------------------------------------------ segment

    def segment(self, request: SegmentRequest | dict, graph_config: dict | None = None) -> tuple[SegmentOutput, str]:
        """(structured output, overlay PNG as base64). Raises :class:`ToolInputError`
        (or :class:`ToolBusyError`) with a message for the agent. ``graph_config`` is
        passed to the graph (a parent graph's config, when called from one of its nodes)."""
        if isinstance(request, dict):
            request = _validated(request)
        vocabulary = checked_vocabulary(request.vocabulary, self.limits)
        rgb = self._load_image(request)
        has_lmm = not isinstance(self.model.lmm, NoLMM)
        notes = []
        if (request.reasoning or request.self_check) and not has_lmm:
            notes.append("no LMM is configured on this server: reasoning and self-check were turned off")
        settings = {
            "reasoning": request.reasoning and has_lmm,
            "self_check": {"enabled": request.self_check and has_lmm, "mode": "lmm"},
        }
        if not self._slots.acquire(timeout=self.limits.queue_timeout_s):
            raise ToolBusyError(
                f"the server is busy ({self.limits.max_concurrent} segmentation(s) running, none finished within "
                f"{self.limits.queue_timeout_s:g} s); try again later"
            )
        future = self._workers.submit(self._run_in_slot, rgb, vocabulary, settings, graph_config)
        try:
            result = future.result(timeout=self.limits.call_timeout_s)
        except FutureTimeout:
            raise ToolInputError(
                f"the segmentation took longer than the limit of {self.limits.call_timeout_s:g} s and was abandoned; "
                "try a smaller image, a smaller vocabulary, or reasoning off"
            ) from None
        except OpenSegRError as exc:
            raise ToolInputError(str(exc)) from None
        trace_id = uuid.uuid4().hex[:16]
        output = build_output(result, trace_id, request.masks, notes)
        self._remember(trace_id, result)
        return output, overlay_png_base64(result)

    async def asegment(self, request: SegmentRequest | dict) -> tuple[SegmentOutput, str]:
        return await asyncio.to_thread(self.segment, request)

    def _run_in_slot(self, rgb, vocabulary, settings, graph_config):
        """Holds its slot until the work is really done, even after a caller's time-out,
        so abandoned work still counts against the concurrency limit (GPU memory)."""
        try:
            return self.model.segment(rgb, vocabulary, graph_config=graph_config, **settings)
        finally:
            self._slots.release()

    def _load_image(self, request: SegmentRequest):
        if request.image_path:
            data = read_image_path(request.image_path, self.limits)
        elif request.image_base64:
            data = decode_base64_image(request.image_base64, self.limits)
        else:
            data = fetch_image_url(request.image_url, self.limits)
        try:
            return load_image(data, max_pixels=self.limits.max_pixels)
        except ImageError as exc:
            raise ToolInputError(str(exc).replace("<bytes>", "the image")) from None

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
    from pydantic import ValidationError

    from openseg_r.errors import describe_validation_error

    try:
        return SegmentRequest.model_validate(arguments)
    except ValidationError as exc:
        raise ToolInputError(f"invalid arguments: {describe_validation_error(exc)}") from None


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
