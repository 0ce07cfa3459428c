"""The ProxyCLIP segmenter: dense CLIP's machinery (text bank and cache, batched windows,
window averaging, resize, class filter, top two, threshold) with ProxyCLIP's encoder."""

from __future__ import annotations

from openseg_r.segmenters.base import BuildRequest
from openseg_r.segmenters.dense_clip.loading import load_clip
from openseg_r.segmenters.dense_clip.numerics import make_thread_invariant
from openseg_r.segmenters.dense_clip.segmenter import CLIPSegmenter
from openseg_r.segmenters.proxyclip.encoder import ProxyCLIPEncoder
from openseg_r.segmenters.proxyclip.options import PROXYCLIP, ProxyCLIPOptions
from openseg_r.segmenters.proxyclip.vfm import VisionFoundationModel, load_vfm, locate_vfm
from openseg_r.segmenters.text_cache import open_text_cache


class ProxyCLIPSegmenter(CLIPSegmenter):
    """``segment``, ``segment_batch``, ``query_bank`` as :class:`CLIPSegmenter`'s; the
    features come from :class:`ProxyCLIPEncoder` on the VFM's grid."""

    def __init__(self, clip, vfm: VisionFoundationModel, options: ProxyCLIPOptions, *, text_store=None) -> None:
        if clip.device.type == "cpu":
            make_thread_invariant(vfm.model)
        encoder = ProxyCLIPEncoder(
            clip.model,
            vfm,
            beta=options.beta,
            gamma=options.gamma,
            clip_mean=clip.mean,
            clip_std=clip.std,
            max_vfm_tokens=options.max_vfm_tokens,
        )
        super().__init__(clip, options, text_store=text_store, encoder=encoder)
        self.options = options
        self.vfm = vfm

    def describe(self) -> dict:
        return {
            "kind": PROXYCLIP.name,
            "weights": self.clip.identity,
            "clip_model": self.clip.model_name,
            "clip_pretrained": self.clip.pretrained,
            "vfm_weights": self.vfm.identity,
            "device": str(self.clip.device),
            "dtype": str(self.clip.dtype).replace("torch.", ""),
            **self.options.model_dump(exclude={"clip_model", "clip_pretrained"}),
        }


def build(options: ProxyCLIPOptions, request: BuildRequest) -> ProxyCLIPSegmenter:
    """The registry's factory for the ``proxyclip`` kind: the VFM's weights are checked
    first, then CLIP is loaded, then the VFM is built on CLIP's device and dtype."""
    vfm_files = locate_vfm(options.vfm, options.vfm_weights, options.vfm_revision)
    clip = load_clip(options.clip_model, options.clip_pretrained, device=request.device, precision=request.precision)
    vfm = load_vfm(options.vfm, vfm_files, device=clip.device, dtype=clip.dtype)
    store = open_text_cache(request.text_cache, random_weights=options.random_weights)
    return ProxyCLIPSegmenter(clip, vfm, options, text_store=store)
