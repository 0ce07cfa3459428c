"""``OpenSegR``: the common case in two lines.

>>> seg = OpenSegR(lmm="scripted:answers.json")
>>> result = seg.segment("photo.jpg", "cat, sofa, lamp")
>>> result.save("out/")

Models load once in the constructor; ``segment`` can be called for many images,
and text embeddings and generic reasoning are reused between calls.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from openseg_r._support.cache import open_reasoning_cache
from openseg_r._support.cancel import CancelToken, cancellable
from openseg_r._support.flights import SingleFlight
from openseg_r._support.images import load_image
from openseg_r._support.store import ArtifactStore
from openseg_r.config.options import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LMM_CONCURRENCY,
    UNREGISTERED,
    ModelOptions,
    field_default,
)
from openseg_r.config.settings import LMMOptions, Settings, merged_settings
from openseg_r.errors import ConfigError, OpenSegRError, ReasoningUnavailableError
from openseg_r.graph import build_graph, recursion_limit
from openseg_r.graph.state import OpenSegState
from openseg_r.lmm.base import NoLMM, backend_label
from openseg_r.lmm.health import is_unavailable_fallback
from openseg_r.lmm.spec import backend_from_spec, configured_options, configured_spec
from openseg_r.nodes.aligners import resolve_aligner
from openseg_r.nodes.context import LMMBackend, OpenSegContext, ReasoningCache
from openseg_r.nodes.stages import ReasoningSlots
from openseg_r.result import ImageOutcome, SegmentationResult
from openseg_r.schemas import DROPPED_ATTRIBUTES_USED, ImageRef, Vocabulary, final_output, region_order
from openseg_r.segmenters.base import BuildRequest, Segmenter
from openseg_r.segmenters.batching import MicroBatcher
from openseg_r.segmenters.registry import build_segmenter, get_kind
from openseg_r.vocab import resolve_vocabulary

if TYPE_CHECKING:
    from openseg_r.runs.database import RunsDB

ImageInput = str | Path | bytes | np.ndarray | Image.Image


class OpenSegR:
    def __init__(
        self,
        options: ModelOptions | None = None,
        *,
        segmenter: Segmenter | None = None,
        lmm: str | LMMBackend | None = None,
        settings: Settings | None = None,
        reasoning_cache: str | Path | ReasoningCache | None = None,
        aligner: str | Callable | None = None,
        runs_db: "str | Path | RunsDB | None" = None,
        **option_values,
    ) -> None:
        """A model built from ``options`` (:class:`~openseg_r.config.options.ModelOptions`:
        which segmenter kind and its options, the LMM, caches, batching, limits), with any
        of its fields given here as keywords over it: ``OpenSegR(lmm="scripted:a.json",
        segmenter="dense-clip", clip_model="ViT-B-16", attention="sclip")``. A keyword that
        is an option of the segmenter kind (``clip_model``, ``attention``, ...) goes to
        ``segmenter_options``. Every default is the options models' own.

        Objects already built are used instead of what the options name: ``segmenter``
        (any :class:`~openseg_r.segmenters.base.Segmenter`), ``lmm`` (a backend),
        ``reasoning_cache`` (a cache), ``aligner`` (a callable) and ``runs_db`` (a
        :class:`~openseg_r.runs.RunsDB`); given as strings they are options. ``settings``
        are the per-run defaults (reasoning is on when there is an LMM, off otherwise).

        A run that asked for reasoning and got none at all (the LMM server unreachable, or
        every answer unusable) raises :class:`~openseg_r.errors.ReasoningUnavailableError`,
        unless the settings say ``allow_fallback=True``."""
        if isinstance(segmenter, str):
            option_values["segmenter"] = segmenter
            segmenter = None
        if segmenter is not None and not isinstance(segmenter, Segmenter):
            raise ConfigError(
                f"{type(segmenter).__name__} is not a segmenter: it needs query_bank(), segment() "
                "and describe() (see openseg_r.segmenters.base.Segmenter)"
            )
        given = {"lmm": lmm, "reasoning_cache": reasoning_cache, "aligner": aligner, "runs_db": runs_db}
        injected = {k: v for k, v in given.items() if v is not None and not isinstance(v, (str, Path))}
        option_values |= {k: str(v) for k, v in given.items() if isinstance(v, (str, Path))}
        options = options or ModelOptions()
        options = options.with_overrides(**option_values) if option_values else options
        # The LMM first: a bad spec fails at once, before weights load.
        backend = injected.get("lmm")
        if backend is not None and not isinstance(backend, LMMBackend):
            raise ConfigError(f"lmm must be a spec string or a backend, got {type(backend).__name__}")
        spec = None if backend is not None else configured_spec(options.lmm)
        explicit = options.lmm_options or LMMOptions()
        # A backend object takes only the options given here; one built from a spec, the config's too.
        lmm_options = explicit if spec is None else configured_options(explicit)
        lmm_concurrency = options.lmm_concurrency or lmm_options.concurrency or DEFAULT_LMM_CONCURRENCY
        calls = lmm_options.model_copy(update={"concurrency": None})  # how each call is made
        self.lmm = backend_from_spec(backend if spec is None else spec, record=options.lmm_record, options=calls)
        lmm_options = lmm_options.model_copy(update={"concurrency": lmm_concurrency})
        self._unregistered: dict | None = None  # what an injected segmenter no registry names says of itself
        if segmenter is None:
            request = BuildRequest(device=options.device, precision=options.precision, text_cache=options.text_cache)
            segmenter = build_segmenter(options.segmenter, options.segmenter_options, request)
        else:
            options, self._unregistered = _options_for_injected(options, segmenter)
        self.segmenter = segmenter
        self._runs = _RunCounter()  # shared with with_lmm()'s siblings, as the micro-batcher is
        self.batcher = None  # concurrent runs' images share forward passes through it
        if options.batch_size > 1 and hasattr(segmenter, "segment_batch"):
            # a bound method of the model (not of the counter): the batcher's worker thread must not hold
            # the last reference to the model, or torch objects get freed in it at interpreter exit (abort)
            self.batcher = MicroBatcher(
                segmenter, options.batch_size, options.batch_wait_ms, expected_callers=self.runs_in_flight
            )
        self.lmm_concurrency = lmm_concurrency
        self._lmm_slots = threading.BoundedSemaphore(max(1, lmm_concurrency))
        self._flights = SingleFlight()
        has_lmm = not isinstance(self.lmm, NoLMM)
        cache_choice = injected.get("reasoning_cache", options.reasoning_cache)
        self.reasoning_cache = open_reasoning_cache(cache_choice, has_lmm=has_lmm)
        self.aligner = resolve_aligner(injected.get("aligner", options.aligner))
        self.settings = settings or Settings(reasoning=has_lmm)
        self.max_pixels = options.max_pixels
        self.redact = options.redact
        self.runs_db = None
        db = injected.get("runs_db", options.runs_db)
        if db is not None:
            from openseg_r.runs.database import RunsDB

            self.runs_db = db if isinstance(db, RunsDB) else RunsDB(db)
        # How to build this model again: recorded with each run, for `runs resume/replay`.
        self.options = options.model_copy(
            update={
                "lmm": spec or getattr(self.lmm, "spec", None) or "none",
                "reasoning_cache": _cache_choice(cache_choice, self.reasoning_cache),
                "aligner": options.aligner if "aligner" not in injected else field_default(ModelOptions, "aligner"),
                "lmm_concurrency": lmm_concurrency,
                "lmm_options": lmm_options,
            }
        )
        self.graph = build_graph(checkpointer=self.runs_db.checkpointer if self.runs_db else None)
        self._interactive_graph = self.graph if self.runs_db else None  # human mode needs a checkpointer
        self._unrecorded: dict[bool, Any] = {}  # graphs for runs kept out of the runs database, by interactive

    @classmethod
    def from_options(
        cls,
        options: ModelOptions | None = None,
        *,
        settings: Settings | None = None,
        segmenter: Segmenter | None = None,
        lmm: LMMBackend | None = None,
        runs_db: "RunsDB | None" = None,
    ) -> "OpenSegR":
        """``OpenSegR(options, ...)``: the name applications that read their configuration
        from a file, flags or the environment use."""
        return cls(options, settings=settings, segmenter=segmenter, lmm=lmm, runs_db=runs_db)

    def recorded_options(self) -> dict:
        """What a recorded run keeps to build this model again (``runs resume/replay``): the
        options, and for a segmenter object no registry names, what it says of itself (such
        a run cannot be built again, and replay says so)."""
        recorded = self.options.recorded()
        if self._unregistered is not None:
            recorded["segmenter"] = UNREGISTERED + str(self._unregistered.get("kind") or type(self.segmenter).__name__)
            recorded["segmenter_options"] = self._unregistered
        return recorded

    def context(self, store: ArtifactStore | None = None) -> OpenSegContext:
        return OpenSegContext(
            segmenter=self.batcher or self.segmenter,
            lmm=self.lmm,
            store=store or ArtifactStore(),
            reasoning_cache=self.reasoning_cache,
            aligner=self.aligner,
            max_concurrent_lmm_calls=self.lmm_concurrency,
            lmm_slots=self._lmm_slots,
            flights=self._flights,
        )

    def runs_in_flight(self) -> int:
        """Runs of this model (and its :meth:`with_lmm` siblings) being advanced right now
        (the micro-batcher's hint)."""
        return self._runs.count()

    def _run_started(self, delta: int) -> None:
        self._runs.add(delta)

    def with_lmm(self, lmm: str | LMMBackend | None) -> "OpenSegR":
        """This model asking another LMM (a spec or a backend; None or ``"none"``: no LMM).
        The loaded segmenter, the micro-batcher, the LMM call slots, the caches and the runs
        database are shared, so runs of both share forward passes; the LMM call options are
        this model's. Made for servers that let each request pick its backend."""
        spec = None if isinstance(lmm, LMMBackend) else ("none" if lmm is None else str(lmm).strip() or "none")
        calls = self.options.lmm_options.model_copy(update={"concurrency": None})
        sibling = copy.copy(self)
        sibling.lmm = backend_from_spec(lmm if spec is None else spec, options=calls)
        sibling.options = self.options.model_copy(
            update={"lmm": spec or getattr(sibling.lmm, "spec", None) or "none", "lmm_record": None}
        )
        return sibling

    def segment(
        self,
        image: ImageInput,
        vocabulary: str | list[str] | Vocabulary,
        *,
        on_question: Callable[[dict, np.ndarray], Any] | None = None,
        on_event: Callable[[dict], None] | None = None,
        graph_config: dict | None = None,
        image_name: str | None = None,
        cancel: CancelToken | None = None,
        record: bool | None = None,
        output: str | Path | None = None,
        **settings_overrides,
    ) -> SegmentationResult:
        """Segment one image. Keyword arguments override fields of :class:`Settings`,
        e.g. ``reasoning=False`` for the bare-name baseline, or
        ``self_check={"enabled": True}`` (nested dicts merge into the model's settings:
        the other self-check fields stay as they were).

        In the self-check's ``human`` mode, ``on_question(question, crop)`` answers each
        region question (a class name, "none of these", or a dict with ``choice``,
        ``confidence`` and ``reason``); or use :meth:`start` to answer step by step.
        ``graph_config`` is merged into the graph's run config (callbacks, or a parent
        graph's config when this is called from inside a node). ``on_event`` receives the
        step log's events (see :mod:`openseg_r.runs.events`). ``cancel`` (a
        :class:`~openseg_r._support.cancel.CancelToken`) stops the run at its next text batch, window
        pass or graph step once it is set, with :class:`~openseg_r._support.cancel.Cancelled`.
        ``record=False`` keeps this run out of the model's runs database. ``output``: the
        folder the caller writes the result to, kept with a recorded run (``runs resume``
        writes there again)."""
        run = self.start(
            image,
            vocabulary,
            graph_config=graph_config,
            on_event=on_event,
            image_name=image_name,
            cancel=cancel,
            record=record,
            output=output,
            **settings_overrides,
        )
        while run.result is None:
            if on_question is None:
                raise ConfigError("the self-check is in human mode: pass on_question=..., or use start() and answer()")
            run.answer({q["region_id"]: on_question(q, run.crop(q)) for q in run.questions})
        return run.result

    def segment_many(
        self,
        images: Iterable[ImageInput],
        vocabulary: str | list[str] | Vocabulary,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        names: Sequence[str | None] | None = None,
        **settings_overrides,
    ) -> list[ImageOutcome]:
        """Segment many images, ``concurrency`` runs at once: their LMM calls overlap (within
        the model's ``lmm_concurrency``) and their forward passes are shared (up to
        ``batch_size`` images). Outcomes come back in input order; an image that fails
        has its one-line error in its outcome and the others go on."""
        outcomes = self.iter_segment_many(
            images, vocabulary, concurrency=concurrency, names=names, **settings_overrides
        )
        return sorted(outcomes, key=lambda outcome: outcome.index)

    def iter_segment_many(
        self,
        images: Iterable[ImageInput],
        vocabulary: str | list[str] | Vocabulary,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        names: Sequence[str | None] | None = None,
        **settings_overrides,
    ) -> Iterator[ImageOutcome]:
        """:meth:`segment_many`, yielding each outcome as soon as its image is done (in any
        order; ``outcome.index`` is its place in ``images``). Paths are decoded in the
        worker threads. ``concurrency`` images reason at once; an image done
        reasoning lets the next one start its own (:mod:`openseg_r.nodes.stages`), so at
        most ``2 x concurrency`` are in flight and ``3 x concurrency`` taken from ``images``
        (with ``concurrency=1``, strictly one image at a time).
        ``names`` name images given as pixels."""
        settings = merged_settings(self.settings, settings_overrides)
        if settings.self_check.enabled and settings.self_check.mode == "human":
            raise ConfigError(
                "the human-mode self-check cannot ask you about many images at once: "
                "use the lmm self-check mode, or segment() one image at a time"
            )
        slots = ReasoningSlots(concurrency)  # checks it; as many again may be past their reasoning
        vocab = resolve_vocabulary(vocabulary)  # a bad vocabulary fails every image: say it once
        items = iter(enumerate(images))
        with ThreadPoolExecutor(max_workers=slots.workers, thread_name_prefix="openseg-r-image") as pool:
            pending: dict = {}  # future -> the image's index
            try:
                for index, image in items:
                    name = names[index] if names is not None else None
                    future = pool.submit(self._outcome, index, image, vocab, name, settings_overrides, slots)
                    pending[future] = index
                    if len(pending) >= 3 * concurrency:
                        yield from _landed(pending)
                while pending:
                    yield from _landed(pending)
            finally:
                for future in list(pending):  # the caller stopped early: drop what has not started
                    future.cancel()

    async def asegment_many(
        self,
        images: Iterable[ImageInput],
        vocabulary: str | list[str] | Vocabulary,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        names: Sequence[str | None] | None = None,
        **settings_overrides,
    ) -> list[ImageOutcome]:
        """:meth:`segment_many` for asyncio code: the runs go to worker threads, the event
        loop stays free; outcomes in input order."""
        import asyncio

        return await asyncio.to_thread(
            self.segment_many, images, vocabulary, concurrency=concurrency, names=names, **settings_overrides
        )

    def _outcome(
        self,
        index: int,
        image: ImageInput,
        vocab: Vocabulary,
        name: str | None,
        settings_overrides: dict,
        slots: ReasoningSlots,
    ) -> ImageOutcome:
        """One image of :meth:`iter_segment_many`, its failure caught as its own."""
        source = name if name is not None else str(image) if isinstance(image, (str, Path)) else None
        started = time.perf_counter()
        try:
            with slots.slot() as on_event:
                result = self.segment(image, vocab, image_name=source, on_event=on_event, **settings_overrides)
        except OpenSegRError as exc:
            return ImageOutcome(index, source, error=str(exc), seconds=time.perf_counter() - started)
        except Exception as exc:  # a bug shows as this image's failure, named, not as everyone's
            return ImageOutcome(
                index,
                source,
                error=f"internal error: {type(exc).__name__}: {exc}",
                seconds=time.perf_counter() - started,
            )
        return ImageOutcome(index, source, result=result, seconds=time.perf_counter() - started)

    def start(
        self,
        image: ImageInput,
        vocabulary: str | list[str] | Vocabulary,
        *,
        graph_config: dict | None = None,
        on_event: Callable[[dict], None] | None = None,
        image_name: str | None = None,
        cancel: CancelToken | None = None,
        record: bool | None = None,
        output: str | Path | None = None,
        **settings_overrides,
    ) -> "SegmentationRun":
        """Begin a run. It completes at once, unless the human-mode self-check pauses it
        with questions: then answer them with :meth:`SegmentationRun.answer`.
        ``image_name`` names an image given as pixels (its path, for the trace and the
        runs database), so a caller that decoded the file need not decode it again.
        ``record`` (default: whether the model has a runs database) records the run there;
        ``record=True`` without a runs database is an error."""
        settings = merged_settings(self.settings, settings_overrides)
        vocab = resolve_vocabulary(vocabulary)
        if record and self.runs_db is None:
            raise ConfigError("record=True needs a runs database (OpenSegR(runs_db=...))")
        rgb = load_image(image, max_pixels=self.max_pixels)
        recorded = self.runs_db is not None and graph_config is None and record is not False
        store = self.runs_db.artifacts(self.redact) if recorded else ArtifactStore()
        source = image_name if image_name is not None else str(image) if isinstance(image, (str, Path)) else None
        ref = ImageRef(key=store.put(rgb, kind="image"), width=rgb.shape[1], height=rgb.shape[0], source=source)
        state = OpenSegState(image=ref, vocabulary=vocab, settings=settings)
        interactive = settings.self_check.enabled and settings.self_check.mode == "human"
        graph = self._graph_for(interactive, kept_out=self.runs_db is not None and record is False)
        run = SegmentationRun(self, graph, store, rgb, settings, graph_config, on_event=on_event, cancel=cancel)
        if recorded:
            self._record_start(
                run.thread_id, ref, vocab, settings, output=None if output is None else str(Path(output).resolve())
            )
            run.recorded = True
        run._advance(state)
        return run

    def _graph_for(self, interactive: bool, kept_out: bool):
        """The compiled graph a run takes: the model's own (with the runs database's
        checkpointer, if any), one with an in-memory checkpointer when the human self-check
        must pause and resume, and plain ones for runs ``kept_out`` of the runs database."""
        if kept_out:
            if interactive not in self._unrecorded:
                self._unrecorded[interactive] = _in_memory_graph() if interactive else build_graph()
            return self._unrecorded[interactive]
        if interactive and self._interactive_graph is None:
            self._interactive_graph = _in_memory_graph()
        return self._interactive_graph if interactive else self.graph

    # ------------------------------------------------------------------ recorded runs

    def _record_start(self, run_id: str, ref: ImageRef, vocab: Vocabulary, settings: Settings, **extra) -> None:
        self.runs_db.start_run(
            run_id,
            image=ref.source,
            image_key=ref.key,
            vocabulary=vocab.name or ", ".join(vocab.names[:6]) + (" …" if len(vocab.names) > 6 else ""),
            classes=len(vocab.classes),
            backend=backend_label(self.lmm) if settings.reasoning or settings.self_check.enabled else "none",
            settings=settings.model_dump(mode="json"),
            options=self.recorded_options(),
            redact=int(self.redact),
            **extra,
        )

    def _require_runs_db(self):
        if self.runs_db is None:
            raise ConfigError("this OpenSegR has no runs database (pass runs_db=...)")
        return self.runs_db

    def _recorded_graph_input(self, run_id: str):
        """(record, its store, its image) for a recorded run; clear errors when they are gone."""
        record = self._require_runs_db().get_run(run_id)
        self.runs_db.require_image(record)
        store = self.runs_db.artifacts(record.redact)
        return record, store, store.get(record.image_key)

    def resume(self, run_id: str, *, on_event: Callable[[dict], None] | None = None) -> "SegmentationRun":
        """Continue a run that crashed or was stopped, from its last checkpoint."""
        record, store, rgb = self._recorded_graph_input(run_id)
        settings = Settings.model_validate(record.settings)
        run = SegmentationRun(self, self.graph, store, rgb, settings, on_event=on_event, thread_id=record.run_id)
        run.recorded = True
        self.runs_db.resume_run(record.run_id)  # keeps its start time; refused while its owner is alive
        run._advance(None)
        return run

    def replay(
        self, run_id: str, from_node: str, *, on_event: Callable[[dict], None] | None = None, **settings_overrides
    ) -> "SegmentationRun":
        """A new run that starts from the recorded state just before ``from_node``
        (``prompt_composition``, ``segmentation`` or ``self_check``), with settings
        overrides; the steps before it, LMM calls included, are not run again."""
        from openseg_r.runs.replay import replay_start

        record, store, rgb = self._recorded_graph_input(run_id)
        values, as_node = replay_start(self.graph, record, from_node)
        settings = merged_settings(values["settings"], settings_overrides)
        values["settings"] = settings
        run = SegmentationRun(self, self.graph, store, rgb, settings, on_event=on_event)
        run.recorded = True
        self._record_start(
            run.thread_id,
            values["image"],
            values["vocabulary"],
            settings,
            parent_run=record.run_id,
            replay_from=from_node,
        )
        self.graph.update_state(run._config, values, as_node=as_node)
        run._advance(None)
        return run

    def _result(
        self, final, store: ArtifactStore, rgb: np.ndarray, cache_before: tuple[int, int], run_id: str | None = None
    ) -> SegmentationResult:
        if not isinstance(final, OpenSegState):
            final = OpenSegState.model_validate({k: v for k, v in dict(final).items() if not k.startswith("__")})
        state = final
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
            lmm=self.describe_lmm() if _uses_lmm(state.settings) else None,
            reasoning_cache=cache,
            self_check_images=images,
            segmenter_labels=store.get(state.segmentation.labels_key) if state.self_check else None,
            run_id=run_id,
        )

    def describe_segmenter(self) -> dict:
        """What segmented (recorded in result.json and an eval's run.json): the kind, its
        options, and what the segmenter says of itself (device, dtype, its weights' identity)."""
        recorded = self.recorded_options()
        options = recorded["segmenter_options"] if self._unregistered is None else {}
        return {"kind": recorded["segmenter"], **options, **self.segmenter.describe()}

    def describe_lmm(self) -> dict:
        """The backend, its generation parameters and the call options in force."""
        described = self.lmm.describe() if hasattr(self.lmm, "describe") else {"backend": backend_label(self.lmm)}
        options = dict(described.get("options") or {}) | {"concurrency": self.lmm_concurrency}
        return described | {"options": options}

    def reasoning_shortfall(self, state: OpenSegState) -> ReasoningUnavailableError | None:
        """The error for a run that asked the LMM and got nothing at all from it: no class
        reasoning, no image reasoning, no self-check answer, and at least one failure. None
        with no LMM (``none``), or when anything came back (from the cache too)."""
        if isinstance(getattr(self.lmm, "inner", self.lmm), NoLMM) or not _uses_lmm(state.settings):
            return None
        steps = ("generic_reasoning", "image_reasoning", "self_check")
        failures = [f for f in state.fallbacks if f.step in steps and f.used != DROPPED_ATTRIBUTES_USED]
        if not failures:
            return None
        if any(r.attributes or r.general_category or r.sub_category for r in (state.generic_reasoning or {}).values()):
            return None
        if state.image_reasoning is not None or any(
            a.source == "lmm" and a.verdict != "no_answer" for a in state.region_answers
        ):
            return None
        down = next((f for f in failures if is_unavailable_fallback(f)), None)
        if down is not None:
            cause = f"{down.reason}; all reasoning fell back to bare class names"
        else:
            cause = f"every LMM answer was unusable (first: {failures[0].reason[:200]})"
        return ReasoningUnavailableError(
            f"no LMM reasoning in this run: {cause} (--allow-fallback or allow_fallback=True keeps the "
            "bare-name result)",
            unavailable=down is not None,
        )


class SegmentationRun:
    """One image's run. ``result`` is set when it is done; until then ``questions``
    holds the human-mode self-check questions it is paused on."""

    def __init__(
        self,
        model: OpenSegR,
        graph,
        store: ArtifactStore,
        rgb: np.ndarray,
        settings: Settings,
        graph_config: dict | None = None,
        on_event: Callable[[dict], None] | None = None,
        thread_id: str | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        self.model, self.graph, self.store, self.rgb = model, graph, store, rgb
        self.cancel = cancel  # read at every text batch, window pass and graph step
        self.thread_id = thread_id or uuid.uuid4().hex
        self.on_event = on_event
        self.recorded = False  # set when the run has a row in the runs database
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
            raise ConfigError(
                f"no pending question for region(s) {', '.join(unknown)}; pending: {', '.join(by_region)}"
            )
        if not answers:
            raise ConfigError("give at least one answer")
        from langgraph.types import Command

        self._advance(Command(resume={by_region[r]["interrupt_id"]: value for r, value in answers.items()}))
        return self

    @property
    def run_id(self) -> str:
        return self.thread_id

    def _advance(self, graph_input) -> None:
        """Stream the graph with the run's cancel token as the current one (its nodes' threads see it)."""
        with cancellable(self.cancel):
            self._stream(graph_input)

    def _stream(self, graph_input) -> None:
        """Stream the graph (values, updates and custom events), feeding the step log."""
        from openseg_r.runs.events import events_from_stream_part

        final, pending, top = None, [], None
        self.model._run_started(+1)
        try:
            for part in self.graph.stream(
                graph_input,
                config=self._config,
                context=self._context,
                stream_mode=["values", "updates", "custom"],
                version="v2",
            ):
                depth = len(part.get("ns") or ())
                top = depth if top is None else min(top, depth)  # inside a parent graph, ours is not the root
                if part["type"] == "values" and depth == top:
                    final = part["data"]
                elif part["type"] == "updates" and depth == top and "__interrupt__" in part["data"]:
                    pending.extend(part["data"]["__interrupt__"])
                if self.on_event is not None:
                    for event in events_from_stream_part(part, self.run_id):
                        self.on_event(event)
                if self.cancel is not None:  # between graph steps
                    self.cancel.check()
            if self.graph.checkpointer is not None and "checkpoint_ns" not in self._config.get("configurable", {}):
                snapshot = self.graph.get_state(self._config)  # every pending question, answered or not before
                final, pending = snapshot.values, list(snapshot.interrupts)
        except BaseException as exc:
            if self.recorded:
                self.model.runs_db.finish_run(
                    self.run_id, "failed", error=f"{type(exc).__name__}: {exc}"[:2000], stopped_at=self._stopped_at()
                )
            raise
        finally:
            self.model._run_started(-1)
        questions = [dict(item.value, interrupt_id=item.id) for item in pending]
        self.questions = sorted(questions, key=lambda q: region_order(q["round"], q["region_id"]))
        if pending:
            if self.recorded:
                self.model.runs_db.finish_run(self.run_id, "waiting")
            return
        self.result = self.model._result(
            final, self.store, self.rgb, self._cache_before, run_id=self.run_id if self.recorded else None
        )
        state = self.result.state
        shortfall = None if state.settings.allow_fallback else self.model.reasoning_shortfall(state)
        if self.recorded:  # recorded as what it was: a run without the reasoning it asked for failed
            self.model.runs_db.finish_run(
                self.run_id,
                "done" if shortfall is None else "failed",
                error=None if shortfall is None else f"no reasoning: {shortfall}"[:2000],
            )
        if shortfall is not None:  # asked for reasoning, got none: no silent bare-name result
            shortfall.result = self.result
            raise shortfall

    def _stopped_at(self) -> str | None:
        """The node(s) a failed run would run next: where it stopped."""
        try:
            return ", ".join(self.graph.get_state(self._config).next) or None
        except Exception:  # no checkpointer: nothing more to say
            return None


class _RunCounter:
    """Runs being advanced, counted across a model and its siblings."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, delta: int) -> None:
        with self._lock:
            self._count += delta

    def count(self) -> int:
        return self._count


def _in_memory_graph():
    from langgraph.checkpoint.memory import InMemorySaver

    return build_graph(checkpointer=InMemorySaver())


def _uses_lmm(settings: Settings) -> bool:
    """Whether a run with these settings asks the LMM (reasoning, or the LMM self-check)."""
    return settings.reasoning or (settings.self_check.enabled and settings.self_check.mode == "lmm")


def _landed(pending: dict) -> Iterator[ImageOutcome]:
    """Wait for at least one of ``pending`` (future -> index) and yield what has finished, in
    input order; an interrupt raised in one image is raised after the others are yielded,
    so the outcomes that finished are never lost with it."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    failure = None
    for future in sorted(done, key=pending.get):
        del pending[future]
        try:
            outcome = future.result()
        except BaseException as exc:  # KeyboardInterrupt and the like: _outcome catches the rest
            failure = failure or exc
            continue
        yield outcome
    if failure is not None:
        raise failure


def _cache_choice(given, cache) -> str | None:
    """How a cache was chosen, for the recorded options: ``user``, a file's path, else memory."""
    if isinstance(given, str) and given == "user":
        return "user"
    if cache is None:  # the choice itself is all there is
        return None if given is None or str(given) in ("", "none", "memory", ":memory:") else str(given)
    return str(cache.path) if getattr(cache, "path", None) else None


__all__ = ["ImageOutcome", "OpenSegR", "SegmentationRun"]


def _options_for_injected(options: ModelOptions, segmenter: Segmenter) -> tuple[ModelOptions, dict | None]:
    """The options recorded for a segmenter object passed in: its kind and options when it
    names a registered kind (``describe()["kind"]``), else the options as they were and what
    it says of itself (such a run cannot be built again)."""
    described = dict(segmenter.describe() or {})
    try:
        kind = get_kind(described.get("kind"))
    except ConfigError:
        return options, json.loads(json.dumps(described, default=str))
    own = {k: v for k, v in described.items() if k in kind.options.model_fields}
    rebuilt = ModelOptions.validated(options.model_dump() | {"segmenter": kind.name, "segmenter_options": own})
    return rebuilt, None
