"""The dense-CLIP segmenter: one small object, two methods.

>>> segmenter = CLIPSegmenter.from_pretrained("ViT-B-16", "openai")
>>> bank = segmenter.query_bank(prompt_set)          # text side, cached per phrase
>>> arrays = segmenter.segment(rgb_uint8, bank)      # image side
"""

from __future__ import annotations

import threading

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from openseg_r.errors import ConfigError, describe_validation_error
from openseg_r.options import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, SegmenterConfig
from openseg_r.segment.dense import DenseCLIPEncoder
from openseg_r.segment.loading import LoadedCLIP, load_clip
from openseg_r.segment.pamr import BandRefiner
from openseg_r.segment.scoring import QueryBank, apply_class_filter, build_query_bank
from openseg_r.segment.sliding import RowResampler, resize_shape, window_boxes
from openseg_r.segment.text import TextEmbedder
from openseg_r.segmenter_io import ClassFilter, SegmentationArrays
from openseg_r.state import PromptSet

BAND_ELEMENTS = 32_000_000  # values held per band of output rows


class CLIPSegmenter:
    def __init__(self, clip: LoadedCLIP, config: SegmenterConfig | None = None, *, text_store=None) -> None:
        """``text_store`` keeps text embeddings between processes (see :mod:`openseg_r.embedding_cache`)."""
        self.clip = clip
        self.config = config or SegmenterConfig()
        self.encoder = DenseCLIPEncoder(clip.model, self.config.attention, self.config.gaussian_sigma,
                                        compile=self.config.compile)
        self.text = TextEmbedder(clip, store=text_store)
        self._features: tuple[str, torch.Tensor] | None = None  # the last image's window features
        self.encoded_images = 0  # how many images went through the vision tower
        self._features_lock = threading.Lock()
        self._mean = torch.tensor(clip.mean, device=clip.device).view(1, 3, 1, 1)
        self._std = torch.tensor(clip.std, device=clip.device).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_CLIP_MODEL,
        pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
        *,
        device: str | None = None,
        precision: str = "auto",
        text_cache: str | None = None,
        **config,
    ) -> "CLIPSegmenter":
        """``text_cache``: an SQLite file for text embeddings, ``"user"`` for the user cache
        file, or None to keep them in memory only."""
        try:
            segmenter_config = SegmenterConfig(**config)
        except ValidationError as exc:
            raise ConfigError(f"invalid segmenter setting: {describe_validation_error(exc)}") from None
        store = None
        if text_cache is not None:
            from openseg_r.embedding_cache import open_text_cache

            store = open_text_cache(text_cache)
        return cls(load_clip(model, pretrained, device=device, precision=precision), segmenter_config,
                   text_store=store)

    def describe(self) -> dict:
        """What this segmenter is: recorded with results and evaluation runs."""
        return {
            "clip_model": self.clip.model_name,
            "clip_pretrained": self.clip.pretrained,
            "device": str(self.clip.device),
            "dtype": str(self.clip.dtype).replace("torch.", ""),
            **self.config.model_dump(),
        }

    # ------------------------------------------------------------------ text side

    def query_bank(self, prompts: PromptSet) -> QueryBank:
        return build_query_bank(prompts, self.text.embed)

    def embed_names(self, names: list[str]) -> torch.Tensor:
        """Bare names through the text tower (template-averaged, normalised): the class
        aligner's default embeddings."""
        return self.text.embed(names, "vild")

    # ----------------------------------------------------------------- image side

    def preprocess(self, rgb: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 (H, W, 3) -> normalised (1, 3, h, w) at the inference size, in ``dtype``
        (default: the model's)."""
        cfg = self.config
        pixels = torch.tensor(rgb, dtype=torch.uint8, device=self.clip.device)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).float() / 255.0
        size = resize_shape(rgb.shape[0], rgb.shape[1], cfg.short_side, cfg.max_long_side)
        patch = max(self.encoder.patch_size)
        if min(size) < patch:
            raise ConfigError(
                f"the image resizes to {size[1]}x{size[0]}, smaller than one {patch}-pixel patch; "
                "raise short_side/max_long_side or use a less elongated image"
            )
        if size != tuple(rgb.shape[:2]):
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        return ((pixels - self._mean) / self._std).to(dtype or self.clip.dtype)

    @torch.inference_mode()
    def dense_logits(self, pixels: torch.Tensor, bank: QueryBank, image_key: str | None = None) -> torch.Tensor:
        """Channel logits (K, h, w) at the inference size, overlapping windows averaged.

        With ``image_key``, the window features of the last image are kept, so the same
        image scored against other prompts (an ablation) is encoded once."""
        cfg = self.config
        _, _, height, width = pixels.shape
        if cfg.slide:
            boxes = window_boxes(height, width, cfg.crop, cfg.stride)
        else:
            boxes = [(0, height, 0, width)]
        features = self._window_features(pixels, boxes, image_key)
        scores = bank.channel_scores(features).permute(0, 3, 1, 2)  # (n, K, gh, gw)
        canvas = torch.zeros((bank.num_channels, height, width), device=pixels.device, dtype=torch.float32)
        counts = torch.zeros((1, height, width), device=pixels.device, dtype=torch.float32)
        for (y1, y2, x1, x2), window in zip(boxes, scores):
            window = F.interpolate(window[None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
            canvas[:, y1:y2, x1:x2] += window[0]
            counts[:, y1:y2, x1:x2] += 1
        return canvas / counts

    def _window_features(self, pixels: torch.Tensor, boxes, image_key: str | None) -> torch.Tensor:
        with self._features_lock:
            if image_key is not None and self._features is not None and self._features[0] == image_key:
                return self._features[1]
        cfg = self.config
        crops = torch.cat([pixels[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
        batch = cfg.window_batch_size or len(boxes)
        features = torch.cat([self.encoder(crops[i : i + batch]) for i in range(0, len(boxes), batch)])
        self.encoded_images += 1
        if image_key is not None:
            with self._features_lock:
                self._features = (image_key, features)
        return features

    def _full_size_logits(
        self, logits: torch.Tensor, pixels: torch.Tensor, out_h: int, out_w: int
    ) -> RowResampler | BandRefiner:
        """The channel logits at the image size, served ``band(start, stop)`` a band of rows at
        a time: resized bilinearly, then, with ``pamr_steps``, refined by PAMR guided by the
        float32 normalised inference-size image resized to the image size (NACLIP's
        ``predict``; docs/design.md §2.2). PAMR refines blocks of rows, one at a time, so its
        memory is bounded too: by ``pamr.BLOCK_ELEMENTS`` and ``pamr.TILE_ELEMENTS``."""
        cfg = self.config
        if cfg.pamr_steps == 0:
            return RowResampler(logits, out_h, out_w)
        return BandRefiner.from_inference(
            logits, pixels[0], out_h, out_w, cfg.pamr_steps, cfg.pamr_dilations
        )

    @torch.inference_mode()
    def segment(
        self,
        rgb: np.ndarray,
        bank: QueryBank,
        *,
        class_filter: ClassFilter | None = None,
        logit_scale: float = 40.0,
        background_index: int | None = None,
        background_threshold: float = 0.0,
        image_key: str | None = None,
    ) -> SegmentationArrays:
        """``image_key`` (the image's content hash, e.g. its artifact-store key) lets the
        same image scored again reuse its window features."""
        class_filter = class_filter or ClassFilter()
        cache_key = None if image_key is None else f"{image_key}{self.config}"
        pixels = self.preprocess(rgb, torch.float32)
        logits = self.dense_logits(pixels.to(self.clip.dtype), bank, image_key=cache_key)
        out_h, out_w = rgb.shape[:2]
        resampler = self._full_size_logits(logits, pixels, out_h, out_w)
        labels = np.empty((out_h, out_w), np.int32)
        confidence = np.empty((out_h, out_w), np.float32)
        runner_up = np.full((out_h, out_w), -1, np.int32)
        runner_up_confidence = np.zeros((out_h, out_w), np.float32)
        margin = np.empty((out_h, out_w), np.float32)
        band_rows = max(1, BAND_ELEMENTS // max(1, bank.num_channels * out_w))
        for start in range(0, out_h, band_rows):
            stop = min(out_h, start + band_rows)
            scores = bank.class_probabilities(resampler.band(start, stop), logit_scale, class_filter)
            probs = apply_class_filter(class_filter, scores)
            top = probs.topk(min(2, probs.shape[0]), dim=0)
            best_prob, best = top.values[0], top.indices[0]
            if probs.shape[0] > 1:
                runner_up[start:stop] = top.indices[1].cpu().numpy()
                runner_up_confidence[start:stop] = top.values[1].cpu().numpy()
                margin[start:stop] = (top.values[0] - top.values[1]).cpu().numpy()
            else:
                margin[start:stop] = best_prob.cpu().numpy()
            if background_index is not None and background_threshold > 0:
                low = best_prob < background_threshold
                best = torch.where(low, torch.full_like(best, background_index), best)
                best_prob = torch.where(low, probs[background_index], best_prob)
            labels[start:stop] = best.cpu().numpy()
            confidence[start:stop] = best_prob.cpu().numpy()
        background_pixels = int((labels == background_index).sum()) if background_index is not None else 0
        return SegmentationArrays(
            labels=labels,
            confidence=confidence,
            runner_up=runner_up,
            margin=margin,
            runner_up_confidence=runner_up_confidence,
            suppressed=class_filter.suppressed(bank.num_classes),
            background_pixels=background_pixels,
        )
