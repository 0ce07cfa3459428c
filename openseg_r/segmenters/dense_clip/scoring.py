"""From text queries and dense similarities to class probabilities (docs/design.md §1.4–1.5).

Every prompt phrase is a *query*. Queries are reduced into *channels* at patch
level, and channels are turned into class probabilities per pixel:

- ``max_then_softmax`` (the reasoning path): a channel is one (class, slot); its
  score is the max over the class's synonyms. Per slot, a softmax over classes;
  then the mean over slots.
- ``softmax_then_max`` (NACLIP's reference order): a channel is one query. Per
  slot, a softmax over all queries; then the max over each class's queries; then
  the mean over slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openseg_r.schemas import PromptSet
from openseg_r.segmenters.base import ClassFilter
from openseg_r.segmenters.dense_clip.numerics import softmax


@dataclass
class QueryBank:
    embeddings: torch.Tensor  # (Q, D), L2-normalised
    query_channel: torch.Tensor  # (Q,) channel each query is max-reduced into
    channel_class: torch.Tensor  # (K,)
    channel_slot: torch.Tensor  # (K,)
    num_classes: int
    num_slots: int

    @property
    def num_channels(self) -> int:
        return int(self.channel_class.numel())

    def channel_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Patch features (..., D) -> channel scores (..., K): cosine, max over each channel's queries."""
        sims = features @ self.embeddings.to(features.device, features.dtype).T
        if self.num_channels == sims.shape[-1] and bool((self.query_channel == torch.arange(self.num_channels)).all()):
            return sims
        index = self.query_channel.to(sims.device).expand(sims.shape)
        out = torch.full((*sims.shape[:-1], self.num_channels), float("-inf"), device=sims.device, dtype=sims.dtype)
        return out.scatter_reduce(-1, index, sims, reduce="amax", include_self=True)

    def class_probabilities(
        self, logits: torch.Tensor, logit_scale: float, class_filter: ClassFilter | None = None
    ) -> torch.Tensor:
        """Channel logits (K, ...) -> class probabilities (C, ...), the mean over slots.

        With a ``hard`` class filter, each slot's softmax runs over the channels of the
        classes it keeps (present plus background) only, and the other classes get 0: the
        OpenSeg-R rule, where the text classifier holds only the classes image reasoning
        found (docs/design.md §1.5)."""
        spatial = logits.shape[1:]
        total = torch.zeros((self.num_classes, *spatial), device=logits.device, dtype=torch.float32)
        kept = kept_classes(class_filter, self.num_classes)
        for slot in range(self.num_slots):
            on_host = (self.channel_slot == slot).nonzero().flatten()  # the layout is decided on the host:
            one_per_class = on_host.numel() == self.num_classes and bool(  # no device sync per image
                (self.channel_class[on_host] == torch.arange(self.num_classes)).all()
            )
            channels = on_host.to(logits.device)
            classes = self.channel_class.to(logits.device)[channels]
            slot_logits = logit_scale * logits[channels].float()
            if kept is not None:
                absent = ~kept.to(logits.device)[classes]
                slot_logits = slot_logits.masked_fill(absent.view(-1, *([1] * len(spatial))), float("-inf"))
            probs = softmax(slot_logits, dim=0)  # the same at any thread count
            if one_per_class:
                total += probs
            else:
                per_class = torch.zeros_like(total)
                index = classes.view(-1, *([1] * len(spatial))).expand(probs.shape)
                total += per_class.scatter_reduce(0, index, probs, reduce="amax", include_self=True)
        return total / self.num_slots


def kept_classes(class_filter: ClassFilter | None, num_classes: int) -> torch.Tensor | None:
    """For a ``hard`` filter that removes some but not all classes: a bool mask of the
    classes its softmax runs over; else None (the softmax runs over every class)."""
    if class_filter is None or class_filter.mode != "hard":
        return None
    absent = class_filter.suppressed(num_classes)
    if not absent or len(absent) == num_classes:
        return None
    kept = torch.ones(num_classes, dtype=torch.bool)
    kept[absent] = False
    return kept


def build_query_bank(prompts: PromptSet, embed) -> QueryBank:
    """``embed(phrases, template_set) -> (N, D)``; the layout follows ``prompts.score_order``."""
    num_slots = prompts.num_slots
    if any(len(c.slots) != num_slots for c in prompts.classes):
        raise ValueError("every class must have the same number of attribute slots")
    phrases: list[str] = []
    query_channel: list[int] = []
    channel_class: list[int] = []
    channel_slot: list[int] = []
    per_class_channels = prompts.score_order == "max_then_softmax"
    if per_class_channels:
        for c in range(len(prompts.classes)):
            for j in range(num_slots):
                channel_class.append(c)
                channel_slot.append(j)
    for c, class_prompts in enumerate(prompts.classes):
        for row in class_prompts.phrases():
            for j, phrase in enumerate(row):
                phrases.append(phrase)
                if per_class_channels:
                    query_channel.append(c * num_slots + j)
                else:
                    query_channel.append(len(channel_class))
                    channel_class.append(c)
                    channel_slot.append(j)
    return QueryBank(
        embeddings=embed(phrases, prompts.templates),
        query_channel=torch.tensor(query_channel, dtype=torch.long),
        channel_class=torch.tensor(channel_class, dtype=torch.long),
        channel_slot=torch.tensor(channel_slot, dtype=torch.long),
        num_classes=len(prompts.classes),
        num_slots=num_slots,
    )


def apply_class_filter(class_filter: ClassFilter, probs: torch.Tensor) -> torch.Tensor:
    """The filter's effect on probabilities already computed over every class. ``zero``:
    absent classes get 0 (no renormalisation). ``soft``: they are multiplied by
    ``soft_weight``, so a class CLIP is very sure of can still win. ``hard`` acts inside the
    softmax (:meth:`QueryBank.class_probabilities`); here it only makes sure absent classes
    are 0. A filter that would remove every class removes none."""
    absent = class_filter.suppressed(probs.shape[0])
    if not absent or len(absent) == probs.shape[0] or class_filter.mode == "none":
        return probs
    probs = probs.clone()
    probs[absent] = probs[absent] * class_filter.soft_weight if class_filter.mode == "soft" else 0.0
    return probs
