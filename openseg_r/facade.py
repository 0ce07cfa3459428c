"""``OpenSegR``: the common case in two lines.

>>> seg = OpenSegR(lmm="scripted:answers.json")
>>> result = seg.segment("photo.jpg", "cat, sofa, lamp")
>>> result.save("out/")

Models load once in the constructor; ``segment`` can be called for many images,
and text embeddings and generic reasoning are reused between calls.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from pydantic import ValidationError

from openseg_r.cache import MemoryReasoningCache, open_cache
from openseg_r.errors import ConfigError, describe_validation_error
from openseg_r.graph import OpenSegContext, build_graph
from openseg_r.graph.builder import recursion_limit
from openseg_r.images import DEFAULT_MAX_PIXELS, load_image
from openseg_r.lmm.base import LMMBackend, NoLMM
from openseg_r.lmm.spec import backend_from_spec, configured_spec
from openseg_r.nodes.class_alignment import sentence_embedder
from openseg_r.nodes.finalize import final_output
from openseg_r.result import SegmentationResult
from openseg_r.segment.segmenter import CLIPSegmenter, SegmenterConfig
from openseg_r.state import ImageRef, OpenSegState, Settings, Vocabulary
from openseg_r.store import ArtifactStore
from openseg_r.vocab import resolve_vocabulary

ImageInput = str | Path | bytes | np.ndarray | Image.Image


class OpenSegR:
    def __init__(
        self,
        clip_model: str = "ViT-B-16",
        clip_pretrained: str | None = "openai",
        *,
        lmm: str | LMMBackend | None = None,
        lmm_record: str | Path | None = None,
        reasoning_cache: str | Path | MemoryReasoningCache | None = None,
        aligner: str | Callable | None = None,
        settings: Settings | None = None,
        segmenter: CLIPSegmenter | None = None,
        device: str | None = None,
        precision: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        **segmenter_config,
    ) -> None:
        """``lmm`` is a backend or a spec string (see :mod:`openseg_r.lmm.spec`); None takes
        ``OPENSEG_R_LMM`` or the config file. Reasoning is on by default when there is an
        LMM and off otherwise; ``settings`` overrides that. ``lmm_record`` appends every
        LMM call to a JSONL file (replay it with ``replay:FILE``). ``reasoning_cache`` is
        an SQLite path (or a cache object); None keeps reasoning in memory. ``aligner``
        is ``clip`` (default), ``minilm``, a sentence-transformers model, or a callable."""
        self.segmenter = segmenter or CLIPSegmenter.from_pretrained(
            clip_model, clip_pretrained, device=device, precision=precision, **segmenter_config
        )
        self.lmm = backend_from_spec(lmm if isinstance(lmm, LMMBackend) else configured_spec(lmm), record=lmm_record)
        self.reasoning_cache = (
            reasoning_cache if isinstance(reasoning_cache, MemoryReasoningCache) else open_cache(reasoning_cache)
        )
        self.aligner = _aligner(aligner)
        self.settings = settings or Settings(reasoning=not isinstance(self.lmm, NoLMM))
        self.max_pixels = max_pixels
        self.graph = build_graph()
        self._interactive_graph = None  # with a checkpointer, built on the first human-mode run

    def context(self, store: ArtifactStore | None = None) -> OpenSegContext:
        return OpenSegContext(
            segmenter=self.segmenter,
            lmm=self.lmm,
            store=store or ArtifactStore(),
            reasoning_cache=self.reasoning_cache,
            aligner=self.aligner,
        )

    def segment(
        self,
        image: ImageInput,
        vocabulary: str | list[str] | Vocabulary,
        *,
        on_question: Callable[[dict, np.ndarray], Any] | None = None,
        graph_config: dict | None = None,
        **settings_overrides,
    ) -> SegmentationResult:
        """Segment one image. Keyword arguments override fields of :class:`Settings`,
        e.g. ``reasoning=False`` for the bare-name baseline, or
        ``self_check={"enabled": True}``.

        In the self-check's ``human`` mode, ``on_question(question, crop)`` answers each
        region question (a class name, "none of these", or a dict with ``choice``,
        ``confidence`` and ``reason``); or use :meth:`start` to answer step by step.
        ``graph_config`` is merged into the graph's run config (callbacks, or a parent
        graph's config when this is called from inside a node)."""
        run = self.start(image, vocabulary, graph_config=graph_config, **settings_overrides)
        while run.result is None:
            if on_question is None:
                raise ConfigError(
                    "the self-check is in human mode: pass on_question=..., or use start() and answer()"
                )
            run.answer({q["region_id"]: on_question(q, run.crop(q)) for q in run.questions})
        return run.result

    def start(
        self, image: ImageInput, vocabulary: str | list[str] | Vocabulary, *, graph_config: dict | None = None,
        **settings_overrides,
    ) -> "SegmentationRun":
        """Begin a run. It completes at once, unless the human-mode self-check pauses it
        with questions: then answer them with :meth:`SegmentationRun.answer`."""
        try:
            settings = Settings.model_validate(self.settings.model_dump() | settings_overrides)
        except ValidationError as exc:
            raise ConfigError(f"invalid setting: {describe_validation_error(exc)}") from None
        vocab = resolve_vocabulary(vocabulary)
        rgb = load_image(image, max_pixels=self.max_pixels)
        store = ArtifactStore()
        source = str(image) if isinstance(image, (str, Path)) else None
        ref = ImageRef(key=store.put(rgb, kind="image"), width=rgb.shape[1], height=rgb.shape[0], source=source)
        state = OpenSegState(image=ref, vocabulary=vocab, settings=settings)
        interactive = settings.self_check.enabled and settings.self_check.mode == "human"
        if interactive and self._interactive_graph is None:
            from langgraph.checkpoint.memory import InMemorySaver

            self._interactive_graph = build_graph(checkpointer=InMemorySaver())
        graph = self._interactive_graph if interactive else self.graph
        run = SegmentationRun(self, graph, store, rgb, settings, graph_config)
        run._advance(state)
        return run

    def _result(self, final: dict, store: ArtifactStore, rgb: np.ndarray, cache_before: tuple[int, int]) -> SegmentationResult:
        state = OpenSegState.model_validate({k: v for k, v in final.items() if not k.startswith("__")})
        output = final_output(state.segmentation, state.self_check)
        cache = {
            "path": str(self.reasoning_cache.path) if self.reasoning_cache.path else None,
            "hits": self.reasoning_cache.hits - cache_before[0],
            "misses": self.reasoning_cache.misses - cache_before[1],
            "events": list(self.reasoning_cache.events),
        }
        images = {a.crop_key: store.get(a.crop_key) for a in state.region_answers}
        images |= {a.context_key: store.get(a.context_key) for a in state.region_answers if a.context_key}
        return SegmentationResult(
            labels=store.get(output.labels_key),
            confidence=store.get(output.confidence_key),
            image=rgb,
            state=state,
            segmenter=self.describe_segmenter(),
            reasoning_cache=cache,
            self_check_images=images,
            segmenter_labels=store.get(state.segmentation.labels_key) if state.self_check else None,
        )

    def describe_segmenter(self) -> dict:
        clip = self.segmenter.clip
        return {
            "clip_model": clip.model_name,
            "clip_pretrained": clip.pretrained,
            "device": str(clip.device),
            "dtype": str(clip.dtype).replace("torch.", ""),
            **asdict(self.segmenter.config),
        }


class SegmentationRun:
    """One image's run. ``result`` is set when it is done; until then ``questions``
    holds the human-mode self-check questions it is paused on."""

    def __init__(
        self, model: OpenSegR, graph, store: ArtifactStore, rgb: np.ndarray, settings: Settings,
        graph_config: dict | None = None,
    ) -> None:
        self.model, self.graph, self.store, self.rgb = model, graph, store, rgb
        self.thread_id = uuid.uuid4().hex
        self.questions: list[dict] = []
        self.result: SegmentationResult | None = None
        self._context = model.context(store)
        self._config = {"configurable": {"thread_id": self.thread_id}, "recursion_limit": recursion_limit(settings)}
        if graph_config:  # a parent graph's run: keep its thread and checkpoint namespace
            self._config = {**graph_config, "recursion_limit": self._config["recursion_limit"]}
        cache = model.reasoning_cache
        self._cache_before = (cache.hits, cache.misses)

    def crop(self, question: dict) -> np.ndarray:
        """The marked crop a question is about (RGB uint8)."""
        return self.store.get(question["crop_key"])

    def answer(self, answers: dict[str, Any]) -> "SegmentationRun":
        """Answer paused questions by region id, and continue from the checkpoint.
        Questions left unanswered stay pending."""
        if self.result is not None:
            raise ConfigError("this run is already complete")
        by_region = {q["region_id"]: q for q in self.questions}
        unknown = sorted(set(answers) - set(by_region))
        if unknown:
            raise ConfigError(f"no pending question for region(s) {', '.join(unknown)}; pending: {', '.join(by_region)}")
        if not answers:
            raise ConfigError("give at least one answer")
        from langgraph.types import Command

        self._advance(Command(resume={by_region[r]["interrupt_id"]: value for r, value in answers.items()}))
        return self

    def _advance(self, graph_input) -> None:
        final = self.graph.invoke(graph_input, config=self._config, context=self._context)
        pending = final.get("__interrupt__") or []
        questions = [dict(item.value, interrupt_id=item.id) for item in pending]
        self.questions = sorted(questions, key=lambda q: (q["round"], int(q["region_id"].rsplit(".", 1)[-1])))
        if not pending:
            self.result = self.model._result(final, self.store, self.rgb, self._cache_before)


def _aligner(choice: str | Callable | None) -> Callable | None:
    if choice is None or choice == "clip":
        return None
    if callable(choice):
        return choice
    return sentence_embedder(choice)


__all__ = ["OpenSegR", "SegmentationRun", "SegmenterConfig"]
