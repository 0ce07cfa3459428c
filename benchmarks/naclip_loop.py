"""What the speed benchmarks compare against: NACLIP's own order of work.

``naclip_loop`` segments one image the way NACLIP's ``forward_slide`` + ``predict`` +
``postprocess_result`` do (``/work/shared/reference/naclip/naclip.py``): one window at a
time through the vision tower; each window's text-similarity logits resized bilinearly to
the crop and padded into a full-size canvas; a count matrix; the division; one resize to
the image size; softmax and argmax. It uses the segmenter's own encoder, weights,
preprocessing and query bank, so the only difference from ``segment_batch`` is the order
and batching of the work. It is the baseline, so it must stay faithful: do not make it
slower (or faster) than NACLIP's code is.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from openseg_r.segmenters.dense_clip.scoring import QueryBank
from openseg_r.segmenters.dense_clip.sliding import window_boxes


@torch.inference_mode()
def naclip_loop(segmenter, rgb: np.ndarray, bank: QueryBank, logit_scale: float = 40.0) -> dict[str, np.ndarray]:
    """One image, NACLIP's order: labels (argmax) and confidence (max probability) on the host."""
    cfg = segmenter.config
    pixels = segmenter.preprocess(rgb, torch.float32).to(segmenter.clip.dtype)
    _, _, h_img, w_img = pixels.shape
    queries = bank.embeddings.to(pixels.device, torch.float32)
    preds = torch.zeros((1, queries.shape[0], h_img, w_img), device=pixels.device, dtype=torch.float32)
    count_mat = torch.zeros((1, 1, h_img, w_img), device=pixels.device, dtype=torch.float32)
    for y1, y2, x1, x2 in window_boxes(h_img, w_img, cfg.crop, cfg.stride):
        features = segmenter.encoder(pixels[:, :, y1:y2, x1:x2])  # (1, gh, gw, D), normalised
        logits = features @ queries.T  # forward_feature: per-window similarity logits
        logits = logits.permute(0, 3, 1, 2)
        logits = F.interpolate(logits, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
        count_mat[:, :, y1:y2, x1:x2] += 1
    logits = preds / count_mat
    logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)  # predict
    probs = torch.softmax(logits[0] * logit_scale, dim=0)  # postprocess_result (one query per class)
    confidence, labels = probs.max(dim=0)
    return {"labels": labels.cpu().numpy(), "confidence": confidence.cpu().numpy()}
