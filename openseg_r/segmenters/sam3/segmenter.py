"""``Sam3Segmenter``: SAM 3 behind the reasoning (the ``sam3`` kind's factory is :func:`build`).

One image encoding, many phrases: the vision backbone runs once per image, and every
phrase of every class goes through SAM 3's detector and mask decoder in batches of
``phrase_batch`` against that one encoding (expanded, never copied or re-encoded). Phrase
text embeddings are computed once and kept (in memory, per phrase). The hard class filter
sends only the classes image reasoning found.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from openseg_r._support.cancel import check_cancelled
from openseg_r.errors import WeightsError, clipped
from openseg_r.schemas import PromptSet
from openseg_r.segmenters.base import BuildRequest, ClassFilter, SegmentationArrays, SegmentJob
from openseg_r.segmenters.devices import resolve_device, resolve_dtype
from openseg_r.segmenters.hub import locate
from openseg_r.segmenters.sam3.merge import Found, merge
from openseg_r.segmenters.sam3.options import SAM3, Sam3Options
from openseg_r.segmenters.sam3.phrases import PhraseSet, phrases_for

TEXT_LENGTH = 32  # SAM 3's text encoder reads 32 tokens (its max_position_embeddings)
MAX_CACHED_PHRASES = 4096
STORE_KEY = "sam3-phrase"  # the text cache's "template set" for SAM 3's phrase embeddings


@dataclass
class Sam3Bank:
    """The text side for one vocabulary: its phrases and their embeddings, one row each."""

    phrases: PhraseSet
    embeds: torch.Tensor  # (P, TEXT_LENGTH, D)
    attention: torch.Tensor  # (P, TEXT_LENGTH) 0/1

    @property
    def num_classes(self) -> int:
        return self.phrases.num_classes


class Sam3Segmenter:
    def __init__(self, model, processor, options: Sam3Options, identity: str, text_store=None) -> None:
        self.model = model.eval()
        self.text_store = text_store  # an SQLiteTextCache, or None: phrase embeddings in memory only
        self.phrases_embedded = 0  # phrases run through the text encoder, over this segmenter's life
        self.processor = processor
        self.options = options
        self.identity = identity
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.phrases_decoded = 0  # phrases sent through the detector and decoder, over all images
        self._text: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._text_lock = threading.Lock()

    # ------------------------------------------------------------------ text side

    def query_bank(self, prompts: PromptSet) -> Sam3Bank:
        phrases = phrases_for(prompts, self.options.phrases_per_class, self.options.max_phrases)
        missing = [p for p in dict.fromkeys(phrases.phrases) if p not in self._text]
        if missing:
            self._embed(missing)
        with self._text_lock:
            rows = [self._text[p] for p in phrases.phrases]
        if not rows:
            empty = torch.zeros((0, TEXT_LENGTH, 1), dtype=self.dtype, device=self.device)
            return Sam3Bank(phrases, empty, torch.zeros((0, TEXT_LENGTH), dtype=torch.long, device=self.device))
        return Sam3Bank(phrases, torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

    @torch.inference_mode()
    def _embed(self, phrases: list[str]) -> None:
        width = self.model.text_projection.out_features
        if self.text_store is not None:
            stored = self.text_store.get_many(self.identity, STORE_KEY, phrases, dim=TEXT_LENGTH * (width + 1))
            with self._text_lock:
                for phrase, flat in stored.items():
                    rows = torch.from_numpy(np.array(flat)).view(TEXT_LENGTH, width + 1)
                    embeds = rows[:, :width].to(self.device, self.dtype)
                    self._text[phrase] = (embeds, rows[:, width].round().long().to(self.device))
            phrases = [p for p in phrases if p not in stored]
        batch = self.options.phrase_batch
        for start in range(0, len(phrases), batch):
            check_cancelled()
            chunk = phrases[start : start + batch]
            tokens = self.processor.tokenizer(
                chunk, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt"
            )
            ids, attention = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            embeds = self.model.get_text_features(input_ids=ids, attention_mask=attention).pooler_output
            self.phrases_embedded += len(chunk)
            if self.text_store is not None:
                rows = torch.cat([embeds.float(), attention[..., None].float()], dim=-1).cpu().numpy()
                self.text_store.put_many(self.identity, STORE_KEY, dict(zip(chunk, rows)))
            with self._text_lock:
                for phrase, row, mask in zip(chunk, embeds, attention):
                    self._text[phrase] = (row, mask)
                while len(self._text) > MAX_CACHED_PHRASES:
                    self._text.popitem(last=False)

    # ----------------------------------------------------------------- image side

    def segment(
        self,
        rgb: np.ndarray,
        bank: Sam3Bank,
        *,
        class_filter: ClassFilter | None = None,
        logit_scale: float = 40.0,
        background_index: int | None = None,
        background_threshold: float = 0.0,
        image_key: str | None = None,
    ) -> SegmentationArrays:
        """``logit_scale`` is dense CLIP's and means nothing here; the rest as :class:`Segmenter` says."""
        job = SegmentJob(rgb, bank, class_filter, logit_scale, background_index, background_threshold, image_key)
        return self.segment_batch([job])[0]

    def segment_batch(self, jobs: Sequence[SegmentJob]) -> list[SegmentationArrays]:
        """Several images: one vision pass over all of them, then each image's phrases."""
        vision = self._encode([job.rgb for job in jobs])
        return [self._one(job, vision, index) for index, job in enumerate(jobs)]

    @torch.inference_mode()
    def _encode(self, images: list[np.ndarray]):
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return self.model.get_vision_features(pixel_values=pixels.to(self.device, self.dtype))

    @torch.inference_mode()
    def _one(self, job: SegmentJob, vision, index: int) -> SegmentationArrays:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        bank: Sam3Bank = job.bank
        class_filter = job.class_filter or ClassFilter()
        suppressed = class_filter.suppressed(bank.num_classes)
        weights = np.ones(bank.num_classes, np.float32)
        if class_filter.mode == "soft":
            weights[suppressed] = class_filter.soft_weight
        dropped = set(suppressed) if class_filter.mode in ("hard", "zero") else set()
        asked = [i for i in bank.phrases.of_classes(None) if bank.phrases.classes[i] not in dropped]
        fpn = [x[index : index + 1] for x in vision.fpn_hidden_states]
        positions = [x[index : index + 1] for x in vision.fpn_position_encoding]
        kept_phrases, kept_scores, kept_boxes, kept_masks = [], [], [], []
        semantic: dict[int, torch.Tensor] = {}  # class -> its phrases' best semantic map (low resolution)
        for start in range(0, len(asked), self.options.phrase_batch):
            check_cancelled()
            chunk = asked[start : start + self.options.phrase_batch]
            size = len(chunk)
            shared = type(vision)(
                fpn_hidden_states=tuple(x.expand(size, -1, -1, -1) for x in fpn),
                fpn_position_encoding=tuple(x.expand(size, -1, -1, -1) for x in positions),
            )
            text = BaseModelOutputWithPooling(pooler_output=bank.embeds[chunk])
            out = self.model(vision_embeds=shared, text_embeds=text, attention_mask=bank.attention[chunk])
            self.phrases_decoded += size
            presence = out.presence_logits.float().sigmoid() if out.presence_logits is not None else None
            scores = out.pred_logits.float().sigmoid()
            if presence is not None:
                scores = scores * presence
            scores = scores * torch.from_numpy(weights[[bank.phrases.classes[i] for i in chunk]])[:, None]
            if out.semantic_seg is not None and self.options.semantic_threshold < 1.0:
                maps = out.semantic_seg[:, 0].float().sigmoid().cpu()
                if presence is not None:
                    maps = maps * presence.cpu()[:, :1, None]
                for row, phrase in enumerate(chunk):
                    cls = bank.phrases.classes[phrase]
                    weighted = maps[row] * float(weights[cls])
                    semantic[cls] = weighted if cls not in semantic else torch.maximum(semantic[cls], weighted)
            hit = (scores > self.options.instance_threshold).nonzero().tolist()
            for row, query in hit:
                kept_phrases.append(chunk[row])
                kept_scores.append(scores[row, query])
                kept_boxes.append(out.pred_boxes[row, query].float().cpu())
                kept_masks.append(out.pred_masks[row, query].float().cpu())
        order = sorted(range(len(kept_scores)), key=lambda k: -float(kept_scores[k]))[: self.options.max_instances]
        found = Found(
            phrases=[kept_phrases[k] for k in order],
            classes=[bank.phrases.classes[kept_phrases[k]] for k in order],
            scores=torch.tensor([float(kept_scores[k]) for k in order], dtype=torch.float32),
            boxes=torch.stack([kept_boxes[k] for k in order]) if order else torch.zeros((0, 4)),
            mask_logits=torch.stack([kept_masks[k] for k in order]) if order else torch.zeros((0, 1, 1)),
        )
        return merge(
            found,
            job.rgb.shape[:2],
            bank.phrases.phrases,
            mask_threshold=self.options.mask_threshold,
            background_index=job.background_index,
            background_threshold=job.background_threshold,
            suppressed=suppressed if class_filter.mode != "none" else [],
            asked=[(bank.phrases.classes[i], bank.phrases.phrases[i]) for i in asked],
            semantic=(list(semantic), torch.stack(list(semantic.values()))) if semantic else None,
            semantic_threshold=self.options.semantic_threshold,
        )

    def describe(self) -> dict:
        return {
            "kind": SAM3.name,
            "weights": self.identity,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            **self.options.model_dump(),
        }


def build(options: Sam3Options, request: BuildRequest) -> Sam3Segmenter:
    """The registry's factory for the ``sam3`` kind: files checked first, then the model."""
    from transformers import Sam3Model, Sam3Processor

    files = locate(options.model, options.revision, what="SAM 3", model_types=("sam3",))
    device = resolve_device(request.device)
    dtype = resolve_dtype(request.precision, device)
    try:
        model = Sam3Model.from_pretrained(str(files.folder), dtype=dtype).to(device)
        processor = Sam3Processor.from_pretrained(str(files.folder))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"cannot load SAM 3 from {options.model}: {clipped(first, 200)}") from None
    from openseg_r.segmenters.text_cache import open_text_cache

    store = open_text_cache(request.text_cache)
    return Sam3Segmenter(model, processor, options, f"{files.identity}|{dtype}", text_store=store)
