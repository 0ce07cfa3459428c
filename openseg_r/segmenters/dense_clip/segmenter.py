"""The dense-CLIP segmenter: one small object, two methods.

>>> segmenter = CLIPSegmenter.from_pretrained("ViT-B-16", "openai")
>>> bank = segmenter.query_bank(prompt_set)          # text side, cached per phrase
>>> arrays = segmenter.segment(rgb_uint8, bank)      # image side
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import ValidationError

from openseg_r._support.cancel import current_token
from openseg_r.errors import ConfigError, describe_validation_error
from openseg_r.schemas import PromptSet
from openseg_r.segmenters.base import BuildRequest, ClassFilter, SegmentationArrays, SegmentJob
from openseg_r.segmenters.dense_clip.dense import DenseCLIPEncoder
from openseg_r.segmenters.dense_clip.loading import LoadedCLIP, load_clip
from openseg_r.segmenters.dense_clip.numerics import make_thread_invariant, resize_bilinear
from openseg_r.segmenters.dense_clip.options import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    DENSE_CLIP,
    DenseCLIPOptions,
    SegmenterConfig,
)
from openseg_r.segmenters.dense_clip.pamr import BandRefiner
from openseg_r.segmenters.dense_clip.scoring import QueryBank, apply_class_filter, build_query_bank
from openseg_r.segmenters.dense_clip.sliding import RowResampler, resize_shape, window_boxes
from openseg_r.segmenters.dense_clip.text import TextEmbedder

BAND_ELEMENTS = 32_000_000  # values held per band of output rows
AUTO_WINDOWS_CPU = 8  # windows per forward pass when not set: larger passes are slower per window on a CPU
AUTO_WINDOWS_GPU = 256  # and on a GPU, where large passes are what fills the device
KEPT_FEATURES = 16  # images whose window features are kept for scoring again (an ablation's settings)
KEPT_FEATURE_VALUES = 64_000_000  # and at most this many feature values in all


class CLIPSegmenter:
    def __init__(
        self, clip: LoadedCLIP, config: SegmenterConfig | None = None, *, text_store=None, encoder=None
    ) -> None:
        """``text_store`` keeps text embeddings between processes (see
        :mod:`openseg_r.segmenters.text_cache`). ``encoder`` replaces the dense-CLIP vision
        pass (windows -> L2-normalised features on a patch grid), as ProxyCLIP's does; one
        with ``window_padding(h, w)`` gets padded windows' scores cut back to the window."""
        self.clip = clip
        self.config = config or SegmenterConfig()
        if clip.device.type == "cpu":  # the same labels at any thread count (docs/design.md §2.5)
            make_thread_invariant(clip.model)
        self.encoder = encoder or DenseCLIPEncoder(
            clip.model, self.config.attention, self.config.gaussian_sigma, compile=self.config.compile
        )
        self.text = TextEmbedder(clip, store=text_store)
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()  # recent images' window features
        self.encoded_images = 0  # how many images went through the vision tower
        self._counts: dict[tuple, torch.Tensor] = {}  # window coverage per image geometry
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
        clip = load_clip(model, pretrained, device=device, precision=precision)
        from openseg_r.segmenters.text_cache import open_text_cache

        random_weights = clip.pretrained is None and not clip.model_name.startswith(("hf-hub:", "local-dir:"))
        return cls(clip, segmenter_config, text_store=open_text_cache(text_cache, random_weights=random_weights))

    def describe(self) -> dict:
        """What this segmenter is: recorded with results and evaluation runs."""
        return {
            "kind": DENSE_CLIP.name,
            "weights": self.clip.identity,
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
        size = resize_shape(rgb.shape[0], rgb.shape[1], cfg.short_side, cfg.max_long_side)
        patch = max(self.encoder.patch_size)
        if min(size) < patch:
            raise ConfigError(
                f"the image resizes to {size[1]}x{size[0]}, smaller than one {patch}-pixel patch; "
                "raise short_side/max_long_side or use a less elongated image"
            )
        pixels = torch.from_numpy(rgb if _shareable(rgb) else np.array(rgb, dtype=np.uint8))
        if self.clip.device.type == "cuda":  # uploaded from pinned memory while the host goes on
            pixels = pixels.pin_memory().to(self.clip.device, non_blocking=True)
        pixels = pixels.to(self.clip.device).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        if size != tuple(rgb.shape[:2]):
            pixels = resize_bilinear(pixels, size)
        return ((pixels - self._mean) / self._std).to(dtype or self.clip.dtype)

    @torch.inference_mode()
    def dense_logits(self, pixels: torch.Tensor, bank: QueryBank, image_key: str | None = None) -> torch.Tensor:
        """Channel logits (K, h, w) at the inference size, overlapping windows averaged.

        With ``image_key``, the window features are kept (a small LRU), so the same
        image scored against other prompts (an ablation) is encoded once."""
        boxes = self._boxes(pixels)
        features = self._features_for([_Prepared(pixels, boxes, image_key)])[0]
        return self._averaged_windows(features, boxes, bank, pixels.shape[-2:], pixels.device)

    def _boxes(self, pixels: torch.Tensor) -> list[tuple[int, int, int, int]]:
        cfg = self.config
        _, _, height, width = pixels.shape
        return window_boxes(height, width, cfg.crop, cfg.stride) if cfg.slide else [(0, height, 0, width)]

    def _averaged_windows(self, features: torch.Tensor, boxes, bank: QueryBank, size, device) -> torch.Tensor:
        height, width = size
        scores = bank.channel_scores(features).permute(0, 3, 1, 2)  # (n, K, gh, gw)
        y1, y2, x1, x2 = boxes[0]
        if all(b[1] - b[0] == y2 - y1 and b[3] - b[2] == x2 - x1 for b in boxes):  # one resize for all windows
            windows = self._window_scores(scores, y2 - y1, x2 - x1)
        else:
            windows = [self._window_scores(w, b[1] - b[0], b[3] - b[2]) for w, b in zip(scores, boxes)]
        canvas = torch.zeros((bank.num_channels, height, width), device=device, dtype=torch.float32)
        for (y1, y2, x1, x2), window in zip(boxes, windows):
            canvas[:, y1:y2, x1:x2] += window
        return canvas / self._window_counts(height, width, boxes, device)

    def _window_scores(self, scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Window scores (..., gh, gw) resized to the window; an encoder that pads windows
        has its scores resized to the padded size and the padding cut off."""
        padding = getattr(self.encoder, "window_padding", None)
        if padding is None:
            return resize_bilinear(scores, (height, width))
        left, right, top, bottom = padding(height, width)
        resized = resize_bilinear(scores, (height + top + bottom, width + left + right))
        return resized[..., top : top + height, left : left + width]

    def _window_counts(self, height: int, width: int, boxes, device) -> torch.Tensor:
        """How many windows cover each pixel (1, h, w); the same for every image of a size."""
        key = (height, width, tuple(boxes), str(device))
        counts = self._counts.get(key)
        if counts is None:
            counts = torch.zeros((1, height, width), device=device, dtype=torch.float32)
            for y1, y2, x1, x2 in boxes:
                counts[:, y1:y2, x1:x2] += 1
            if len(self._counts) >= 64:
                self._counts.clear()
            self._counts[key] = counts
        return counts

    def _features_for(self, images: "list[_Prepared]", cancels: Sequence | None = None) -> list[torch.Tensor | None]:
        """The window features of several images: those kept from before are reused, the
        windows of all the others go through the vision tower together, grouped by window
        shape (all crop x crop when sliding; whole images by size) in forward passes of
        ``window_batch_size`` windows (None: one pass per shape).

        ``cancels[i]`` is image i's cancel token (or None): before each pass, the windows
        left of an image whose token is set are dropped and its features come back None;
        when every image is dropped, :class:`Cancelled` is raised."""
        cancels = list(cancels) if cancels is not None else [None] * len(images)
        found: list[torch.Tensor | None] = [self._kept_features(image.key) for image in images]
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}  # window shape -> (image, window) pairs
        for index, image in enumerate(images):
            if found[index] is None:
                for number, (y1, y2, x1, x2) in enumerate(image.boxes):
                    groups.setdefault((y2 - y1, x2 - x1), []).append((index, number))
        outputs: dict[tuple[int, int], torch.Tensor] = {}
        dropped: set[int] = set()
        batch = self.config.window_batch_size or (
            AUTO_WINDOWS_GPU if self.clip.device.type == "cuda" else AUTO_WINDOWS_CPU
        )
        for pairs in groups.values():
            while pairs:
                dropped |= _cancelled(cancels)
                pairs = [pair for pair in pairs if pair[0] not in dropped]
                chunk, pairs = pairs[:batch], pairs[batch:]
                if not chunk:
                    break
                crops = torch.cat([_crop(images[i].pixels, images[i].boxes[n]) for i, n in chunk])
                for pair, feature in zip(chunk, self._encode(crops.to(self.clip.dtype))):
                    outputs[pair] = feature
        dropped |= _cancelled(cancels)
        for index, image in enumerate(images):
            if index in dropped:
                found[index] = None
            elif found[index] is None:
                found[index] = torch.stack([outputs[(index, n)] for n in range(len(image.boxes))])
                self.encoded_images += 1
                self._keep_features(image.key, found[index])
        return found

    def _encode(self, crops: torch.Tensor) -> torch.Tensor:
        """The vision tower on a pass of windows. Compiled, a pass is padded to the next
        power of two, so a few graphs serve every batch size (one graph per shape)."""
        count = crops.shape[0]
        if not getattr(self.config, "compile", False) or count & (count - 1) == 0:
            return self.encoder(crops)
        padded = 1 << count.bit_length()
        filler = crops.new_zeros((padded - count, *crops.shape[1:]))
        return self.encoder(torch.cat([crops, filler]))[:count]

    def _kept_features(self, key: str | None) -> torch.Tensor | None:
        if key is None:
            return None
        with self._features_lock:
            features = self._features.get(key)
            if features is not None:
                self._features.move_to_end(key)
            return features

    def _keep_features(self, key: str | None, features: torch.Tensor) -> None:
        if key is None:
            return
        with self._features_lock:
            self._features[key] = features
            while len(self._features) > KEPT_FEATURES or (
                len(self._features) > 1 and sum(f.numel() for f in self._features.values()) > KEPT_FEATURE_VALUES
            ):
                self._features.popitem(last=False)

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
        return BandRefiner.from_inference(logits, pixels[0], out_h, out_w, cfg.pamr_steps, cfg.pamr_dilations)

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
        same image scored again reuse its window features. The current work's cancel token
        (:mod:`openseg_r._support.cancel`) stops it at the next window pass."""
        job = SegmentJob(
            rgb,
            bank,
            class_filter,
            logit_scale,
            background_index,
            background_threshold,
            image_key,
            cancel=current_token(),
        )
        return self.segment_batch([job])[0]

    @torch.inference_mode()
    def segment_batch(self, jobs: Sequence[SegmentJob]) -> list[SegmentationArrays]:
        """Several images (of any sizes, each with its own prompts and filter) at once.

        Their windows go through the vision tower together (see :meth:`_features_for`);
        each image's post-processing (window averaging, resize, PAMR, class probabilities,
        filter, top-2, threshold) stays on the device, a band of rows at a time, and only
        its final arrays cross to the host, once, after the whole batch is queued
        (docs/design.md §2.4). Results equal :meth:`segment` image by image.

        A job whose ``cancel`` token is set stops at the next window pass and gets None in
        its place; when every job is cancelled, :class:`Cancelled` is raised."""
        jobs = list(jobs)
        cancels = [job.cancel for job in jobs]
        _cancelled(cancels)  # every image cancelled already: nothing to do
        prepared = [self._prepare(job) for job in jobs]
        features = self._features_for(prepared, cancels)
        live = [index for index, feats in enumerate(features) if feats is not None]
        on_device = [self._finish_on_device(jobs[i], prepared[i], features[i]) for i in live]
        results: list[SegmentationArrays | None] = [None] * len(jobs)
        for index, arrays in zip(live, _fetch(on_device)):
            results[index] = self._to_host(jobs[index], arrays)
        return results

    def _prepare(self, job: SegmentJob) -> "_Prepared":
        pixels = self.preprocess(job.rgb, torch.float32)
        key = None if job.image_key is None else f"{job.image_key}{self.config}"
        return _Prepared(pixels, self._boxes(pixels), key)

    def _finish_on_device(self, job: SegmentJob, image: "_Prepared", features: torch.Tensor) -> dict:
        """Labels, runner-up (int16 where the vocabulary fits, else int32) and confidence,
        margin, runner-up confidence (float32) of one image, still on the device."""
        bank = job.bank
        class_filter = job.class_filter or ClassFilter()
        logits = self._averaged_windows(features, image.boxes, bank, image.pixels.shape[-2:], image.pixels.device)
        out_h, out_w = job.rgb.shape[:2]
        resampler = self._full_size_logits(logits, image.pixels, out_h, out_w)
        device = image.pixels.device
        index_dtype = torch.int16 if bank.num_classes < 2**15 else torch.int32
        indices = torch.full((2, out_h, out_w), -1, dtype=index_dtype, device=device)  # labels, runner-up
        values = torch.zeros((3, out_h, out_w), dtype=torch.float32, device=device)  # confidence, margin, runner-up
        band_rows = max(1, BAND_ELEMENTS // max(1, bank.num_channels * out_w))
        threshold = job.background_index is not None and job.background_threshold > 0
        for start in range(0, out_h, band_rows):
            stop = min(out_h, start + band_rows)
            scores = bank.class_probabilities(resampler.band(start, stop), job.logit_scale, class_filter)
            probs = apply_class_filter(class_filter, scores)
            top = probs.topk(min(2, probs.shape[0]), dim=0)
            best_prob, best = top.values[0], top.indices[0]
            if probs.shape[0] > 1:
                indices[1, start:stop] = top.indices[1].to(index_dtype)
                values[2, start:stop] = top.values[1]
                values[1, start:stop] = top.values[0] - top.values[1]
            else:
                values[1, start:stop] = best_prob
            if threshold:
                low = best_prob < job.background_threshold
                best = torch.where(low, torch.full_like(best, job.background_index), best)
                best_prob = torch.where(low, probs[job.background_index], best_prob)
            indices[0, start:stop] = best.to(index_dtype)
            values[0, start:stop] = best_prob
        return {"indices": indices, "values": values}

    def _to_host(self, job: SegmentJob, arrays: dict) -> SegmentationArrays:
        labels = arrays["indices"][0].astype(np.int32)
        background = job.background_index
        return SegmentationArrays(
            labels=labels,
            confidence=arrays["values"][0],
            runner_up=arrays["indices"][1].astype(np.int32),
            margin=arrays["values"][1],
            runner_up_confidence=arrays["values"][2],
            suppressed=(job.class_filter or ClassFilter()).suppressed(job.bank.num_classes),
            background_pixels=int((labels == background).sum()) if background is not None else 0,
        )


@dataclass
class _Prepared:
    """One image at the inference size: normalised float32 pixels (1, 3, h, w), its windows,
    and the key its window features are kept under (None: not kept)."""

    pixels: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    key: str | None


def _cancelled(cancels: Sequence) -> set[int]:
    """The images whose token is set; :class:`Cancelled` when that is every one of them."""
    dropped = {index for index, token in enumerate(cancels) if token is not None and token.cancelled}
    if cancels and len(dropped) == len(cancels):
        raise cancels[0].error()
    return dropped


def _shareable(rgb: np.ndarray) -> bool:
    """Whether torch may wrap the array as it is (else it is copied once)."""
    return rgb.dtype == np.uint8 and rgb.flags.c_contiguous and rgb.flags.writeable


def _crop(pixels: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    y1, y2, x1, x2 = box
    return pixels[:, :, y1:y2, x1:x2]


def _fetch(on_device: list[dict]) -> list[dict]:
    """Every image's arrays to the host: on a GPU into pinned buffers without blocking,
    then one synchronisation for the whole batch, so the device never waits mid-batch."""
    if not on_device or on_device[0]["indices"].device.type != "cuda":
        return [{name: tensor.numpy() for name, tensor in arrays.items()} for arrays in on_device]
    host = []
    for arrays in on_device:
        pinned = {}
        for name, tensor in arrays.items():
            pinned[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            pinned[name].copy_(tensor, non_blocking=True)
        host.append(pinned)
    torch.cuda.current_stream(on_device[0]["indices"].device).synchronize()
    return [{name: tensor.numpy() for name, tensor in arrays.items()} for arrays in host]


def build(options: DenseCLIPOptions, request: BuildRequest) -> CLIPSegmenter:
    """The registry's factory for the ``dense-clip`` kind."""
    return CLIPSegmenter.from_pretrained(
        options.clip_model,
        options.clip_pretrained,
        device=request.device,
        precision=request.precision,
        text_cache=request.text_cache,
        **options.inference().model_dump(),
    )
