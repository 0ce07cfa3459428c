"""Self-check: find where the segmenter is unsure, ask about each region, apply the answers.

Three nodes make one round, and the graph loops over rounds:

- ``find_ambiguous_regions`` finds the top K regions not asked about before, and
  splits the remaining LMM-call budget between them (or stops the loop);
- ``check_region`` runs once per region, in parallel (LangGraph ``Send``): it cuts a
  crop with the region outlined and asks the LMM, or a person through
  ``interrupt`` in ``human`` mode, to choose among the competing classes;
- ``apply_decisions`` applies the round's answers to the label map and records
  every pixel it changed.

Answers are untrusted: a choice must resolve to one of the region's competing
classes (exactly, after normalisation, or by the class aligner's embeddings), or
to "none of these"; anything else is rejected and changes nothing.
"""

from __future__ import annotations

import numpy as np
from langgraph.runtime import Runtime
from langgraph.types import interrupt
from pydantic import BaseModel, Field, ValidationError

from openseg_r._support.store import ArtifactStore
from openseg_r.config.settings import Settings
from openseg_r.lmm.base import LMMRequest, ask_in_run
from openseg_r.lmm.health import unavailable_fallback
from openseg_r.nodes.context import OpenSegContext
from openseg_r.nodes.matching import NameMatcher, normalise_name
from openseg_r.nodes.regions import (
    context_image,
    crop_box,
    full_mask,
    locate_ambiguous_regions,
    mark_unknown,
    marked_crop,
    relabel,
    reweight,
)
from openseg_r.prompts.reasoning import CROP_AND_CONTEXT_NOTE, CROP_NOTE, SELF_CHECK, class_list_text, quoted
from openseg_r.schemas import (
    AmbiguousRegion,
    ClassAlignment,
    ClassReasoning,
    Fallback,
    ImageRef,
    LMMCall,
    RegionAnswer,
    RegionChange,
    RegionEvidence,
    RegionVerdict,
    SegmentationOutput,
    SelfCheckRound,
    SelfCheckState,
    Vocabulary,
    VocabularyClass,
)
from openseg_r.segmenters.base import SegmentationArrays

STEP = "self_check"
NONE_OF_THESE = "none of these"
_NONE_ANSWERS = {
    normalise_name(text)
    for text in (
        "none",
        "none of these",
        "none of them",
        "none of the above",
        "neither",
        "neither of these",
        "neither of them",
        "unknown",
        "other",
        "nothing",
        "no",
    )
}


# --------------------------------------------------------------------------- find


class FindRegionsInput(BaseModel):
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    segmentation: SegmentationOutput
    self_check: SelfCheckState | None = None
    generic_reasoning: dict[str, ClassReasoning] | None = None
    alignment: ClassAlignment | None = None


class FindRegionsOutput(BaseModel):
    self_check: SelfCheckState


def find_ambiguous_regions(state: FindRegionsInput, runtime: Runtime[OpenSegContext]) -> FindRegionsOutput:
    """Start the next round, or stop the loop and say why."""
    ctx, cfg = runtime.context, state.settings.self_check
    check = (state.self_check or SelfCheckState(output=state.segmentation)).model_copy(deep=True)
    arrays = load_arrays(ctx.store, check.output)
    asked = ctx.store.get(check.asked_key) if check.asked_key else None
    found = locate_ambiguous_regions(arrays, cfg, asked)
    first = check.round == 0
    if not found:
        check.stopped = "no ambiguous region found" if first else "nothing ambiguous left"
        return FindRegionsOutput(self_check=check)
    if check.round >= cfg.rounds:
        check.stopped = f"round limit ({cfg.rounds}) reached; {len(found)} ambiguous region(s) left unasked"
        return FindRegionsOutput(self_check=check)
    if cfg.mode == "lmm" and ctx.lmm_breaker.cause:
        check.stopped = f"{ctx.lmm_breaker.cause}; {len(found)} ambiguous region(s) left unasked"
        return FindRegionsOutput(self_check=check)
    chosen = found[: cfg.top_k]
    allowance: list[int] = []
    over_budget = 0
    if cfg.mode == "lmm":
        remaining = cfg.max_calls - check.calls_used
        if remaining <= 0:
            check.budget_exhausted = True
            check.stopped = f"LMM call budget ({cfg.max_calls}) used up; {len(found)} ambiguous region(s) left unasked"
            return FindRegionsOutput(self_check=check)
        over_budget = max(0, len(chosen) - remaining)
        chosen = chosen[:remaining]
        allowance = split_budget(remaining, len(chosen), ctx.lmm.max_attempts)
        check.budget_exhausted = over_budget > 0
    check.round += 1
    names = state.vocabulary.names
    regions = [
        AmbiguousRegion(
            id=f"r{check.round}.{rank}",
            round=check.round,
            box=region.box,
            area=region.area,
            mean_margin=round(region.mean_margin, 6),
            score=round(region.score, 3),
            mask_key=ctx.store.put(region.mask),
            at_border=region.at_border,
            competing=[
                RegionEvidence(
                    name=names[cls],
                    mean_probability=round(probability, 6),
                    top1_share=round(share, 6),
                    attributes=_attributes_held(names[cls], state),
                )
                for cls, probability, share in region.competing
            ],
        )
        for rank, region in enumerate(chosen, start=1)
    ]
    check.rounds.append(
        SelfCheckRound(
            round=check.round,
            regions=regions,
            call_allowance={r.id: a for r, a in zip(regions, allowance)},
            left_over_k=max(0, len(found) - cfg.top_k),
            left_over_budget=over_budget,
        )
    )
    return FindRegionsOutput(self_check=check)


def split_budget(remaining: int, regions: int, max_attempts: int) -> list[int]:
    """Calls per region: at least one each, re-asks where the budget allows; the sum never exceeds it."""
    if regions == 0:
        return []
    base, extra = divmod(remaining, regions)
    return [max(1, min(max_attempts, base + (1 if i < extra else 0))) for i in range(regions)]


def _attributes_held(name: str, state: FindRegionsInput) -> list[str]:
    if state.alignment and state.alignment.image_attributes.get(name):
        return state.alignment.image_attributes[name]
    generic = (state.generic_reasoning or {}).get(name)
    return generic.attributes if generic else []


def load_arrays(store: ArtifactStore, output: SegmentationOutput) -> SegmentationArrays:
    """Writable copies of the arrays (the store's are read-only)."""
    labels = store.get(output.labels_key)
    runner_up_confidence = (
        store.get(output.runner_up_confidence_key)
        if output.runner_up_confidence_key
        else np.zeros(labels.shape, np.float32)
    )
    return SegmentationArrays(
        labels=labels.copy(),
        confidence=store.get(output.confidence_key).copy(),
        runner_up=store.get(output.runner_up_key),
        runner_up_confidence=runner_up_confidence,
        margin=store.get(output.margin_key),
    )


# --------------------------------------------------------------------------- ask


class CheckRegionInput(BaseModel):
    """One region question: what ``Send`` carries to ``check_region``."""

    image: ImageRef
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    region: AmbiguousRegion
    call_allowance: int = 1


class CheckRegionOutput(BaseModel):
    region_answers: list[RegionAnswer]
    lmm_calls: list[LMMCall] = Field(default_factory=list)
    fallbacks: list[Fallback] = Field(default_factory=list)


def check_region(state: CheckRegionInput, runtime: Runtime[OpenSegContext]) -> CheckRegionOutput:
    ctx, cfg, region = runtime.context, state.settings.self_check, state.region
    rgb = ctx.store.get(state.image.key)
    mask = full_mask(rgb.shape[:2], region.box, ctx.store.get(region.mask_key))
    box = crop_box(region.box, state.image.width, state.image.height, cfg.context, cfg.min_crop)
    crop = marked_crop(rgb, mask, box)
    images = [crop]
    crop_key = ctx.store.put(crop, kind="image")
    context_key = None
    if cfg.full_image:
        overview = context_image(rgb, region.box)
        context_key = ctx.store.put(overview, kind="image")
        images.append(overview)
    question = region_question(state.image, region, with_context=cfg.full_image)
    base = {
        "region_id": region.id,
        "round": region.round,
        "question": question,
        "crop_key": crop_key,
        "context_key": context_key,
    }
    if cfg.mode == "human":
        reply = interrupt(human_question_payload(region, question, crop_key, context_key))
        answer = _human_answer(reply, base, state, runtime)
        return CheckRegionOutput(region_answers=[answer])
    request = LMMRequest(
        step=STEP,
        prompt=question,
        prompt_version=SELF_CHECK.version,
        schema=RegionVerdict,
        images=images,
        subject=region.id,
    )
    reply = ask_in_run(ctx.lmm, request, ctx.lmm_breaker, ctx.lmm_slots, max_attempts=state.call_allowance)
    fallbacks = []
    if reply.value is None:
        answer = RegionAnswer(
            **base, source="lmm", verdict="no_answer", lmm_calls=len(reply.calls), note=reply.error or "no answer"
        )
        if getattr(reply, "unavailable", None):  # one fallback per run names the cause
            if ctx.lmm_breaker.claim_report():
                fallbacks.append(unavailable_fallback(STEP, ctx.lmm_breaker.cause))
        else:
            fallbacks.append(
                Fallback(
                    step=STEP, subject=region.id, reason=reply.error or "no answer", used="region left as segmented"
                )
            )
    else:
        answer = resolve_verdict(reply.value, region, state.vocabulary, state.settings, ctx, base, "lmm")
        answer.lmm_calls = len(reply.calls)
    return CheckRegionOutput(region_answers=[answer], lmm_calls=reply.calls, fallbacks=fallbacks)


def region_question(image: ImageRef, region: AmbiguousRegion, with_context: bool) -> str:
    evidence = "\n".join(
        f"- {quoted(e.name, 120)}: segmenter probability {e.mean_probability:.2f} in this region"
        + (f"; looks like: {quoted(', '.join(e.attributes), 300)}" if e.attributes else "")
        for e in region.competing
    )
    x0, y0, x1, y1 = region.box
    return SELF_CHECK.render(
        images_note=CROP_AND_CONTEXT_NOTE if with_context else CROP_NOTE,
        class_list=class_list_text([e.name for e in region.competing]),
        width=image.width,
        height=image.height,
        x0=x0,
        x1=x1,
        y0=y0,
        y1=y1,
        evidence=evidence,
    )


def human_question_payload(region: AmbiguousRegion, question: str, crop_key: str, context_key: str | None) -> dict:
    """What ``interrupt`` hands a person or a calling agent; resume with a class name,
    "none of these", or ``{"choice": ..., "confidence": 0..1, "reason": ...}``."""
    return {
        "kind": "self_check_question",
        "region_id": region.id,
        "round": region.round,
        "box": list(region.box),
        "choices": [e.name for e in region.competing] + [NONE_OF_THESE],
        "evidence": [e.model_dump() for e in region.competing],
        "question": question,
        "crop_key": crop_key,
        "context_key": context_key,
    }


def _human_answer(reply: object, base: dict, state: CheckRegionInput, runtime) -> RegionAnswer:
    if isinstance(reply, str):
        reply = {"choice": reply}
    if isinstance(reply, dict):
        reply = {"confidence": 1.0, **reply}
    try:
        verdict = RegionVerdict.model_validate(reply)
    except ValidationError as exc:
        problem = "; ".join(err["msg"] for err in exc.errors()[:3])
        return RegionAnswer(**base, source="human", verdict="no_answer", note=f"unusable answer: {problem}")
    return resolve_verdict(verdict, state.region, state.vocabulary, state.settings, runtime.context, base, "human")


def resolve_verdict(
    verdict: RegionVerdict,
    region: AmbiguousRegion,
    vocabulary: Vocabulary,
    settings: Settings,
    ctx: OpenSegContext,
    base: dict,
    source: str,
) -> RegionAnswer:
    """Map the answer's choice onto the competing classes, "none of these", or a rejection."""
    common = dict(
        **base, source=source, raw_choice=verdict.choice, confidence=verdict.confidence, reason=verdict.reason
    )
    raw = verdict.choice
    if normalise_name(raw) in _NONE_ANSWERS:
        return RegionAnswer(**common, verdict="none_of_these")
    by_name = {c.name: c for c in vocabulary.classes}
    competing = [by_name.get(e.name) or VocabularyClass(name=e.name, queries=[e.name]) for e in region.competing]
    matcher = NameMatcher(competing)
    aligned = matcher.match_text(raw)
    if aligned.matched is None:
        elsewhere = NameMatcher(vocabulary.classes).match_text(raw).matched
        if elsewhere is not None:
            return RegionAnswer(
                **common,
                verdict="rejected",
                alignment=aligned,
                note=f"names {elsewhere!r}, which does not compete here",
            )
        embed = ctx.name_embedder()
        if embed is not None:
            aligned = matcher.match_embeddings([raw], embed, settings.align_threshold)[0]
    if aligned.matched is not None:
        return RegionAnswer(**common, verdict="class", choice=aligned.matched, alignment=aligned)
    score = f" (best similarity {aligned.score:.2f})" if aligned.score is not None else ""
    return RegionAnswer(
        **common, verdict="rejected", alignment=aligned, note=f"the choice matches none of the competing classes{score}"
    )


# --------------------------------------------------------------------------- apply


class ApplyDecisionsInput(BaseModel):
    vocabulary: Vocabulary
    settings: Settings = Field(default_factory=Settings)
    self_check: SelfCheckState
    region_answers: list[RegionAnswer] = Field(default_factory=list)


class ApplyDecisionsOutput(BaseModel):
    self_check: SelfCheckState


def apply_decisions(state: ApplyDecisionsInput, runtime: Runtime[OpenSegContext]) -> ApplyDecisionsOutput:
    """Apply this round's answers in rank order; every region asked about is never asked again."""
    store, cfg = runtime.context.store, state.settings.self_check
    check = state.self_check.model_copy(deep=True)
    current = check.rounds[-1]
    answers = {a.region_id: a for a in state.region_answers if a.round == check.round}
    arrays = load_arrays(store, check.output)
    asked = store.get(check.asked_key).copy() if check.asked_key else np.zeros(arrays.labels.shape, bool)
    names = state.vocabulary.names
    index = {name: i for i, name in enumerate(names)}
    for region in current.regions:
        mask = full_mask(arrays.labels.shape, region.box, store.get(region.mask_key))
        asked |= mask
        answer = answers.get(region.id)
        check.calls_used += answer.lmm_calls if answer else 0
        before = arrays.labels.copy()
        action, why, to_class, changed = _decide(answer, cfg, arrays, mask, index)
        check.changes.append(
            RegionChange(
                region_id=region.id,
                round=region.round,
                action=action,
                why=why,
                to_class=to_class,
                pixels_changed=int(changed.sum()) if changed is not None else 0,
                from_classes=_from_classes(before, changed, names) if changed is not None else {},
            )
        )
    check.asked_key = store.put(asked)
    check.output = check.output.model_copy(
        update={"labels_key": store.put(arrays.labels), "confidence_key": store.put(arrays.confidence)}
    )
    return ApplyDecisionsOutput(self_check=check)


def _decide(answer: RegionAnswer | None, cfg, arrays, mask, index):
    """(action, why, to_class, changed pixels or None) for one region."""
    if answer is None:
        return "unchanged", "no answer was recorded", None, None
    if answer.verdict in ("no_answer", "rejected"):
        return "unchanged", f"{answer.verdict.replace('_', ' ')}: {answer.note}", None, None
    if answer.confidence is None or answer.confidence < cfg.min_confidence:
        return "unchanged", f"confidence {answer.confidence} under {cfg.min_confidence}", None, None
    if answer.verdict == "none_of_these":
        if cfg.none_policy == "keep":
            return "unchanged", "none of these; policy keeps the region as segmented", None, None
        return "unknown", "none of these; policy marks the region unknown", None, mark_unknown(arrays, mask)
    cls = index[answer.choice]
    if cfg.apply == "reweight":
        changed = reweight(arrays, mask, cls, cfg.reweight_factor)
        return (
            "reweight",
            f"{answer.choice!r} weighted x{cfg.reweight_factor} inside the region",
            answer.choice,
            changed,
        )
    return (
        "relabel",
        f"{answer.choice!r} chosen with confidence {answer.confidence:.2f}",
        answer.choice,
        relabel(arrays, mask, cls),
    )


def _from_classes(before: np.ndarray, changed: np.ndarray, names: list[str]) -> dict[str, int]:
    old = before[changed]
    counts: dict[str, int] = {}
    for value, count in zip(*np.unique(old, return_counts=True)):
        counts[names[value] if value >= 0 else "unknown"] = int(count)
    return counts
