"""The ``proxyclip`` kind's options (no torch here: listing kinds never loads a model).

ProxyCLIP (Lan et al., "ProxyCLIP: Proxy Attention Improves CLIP for Open-Vocabulary
Segmentation", ECCV 2024, arXiv 2408.04883) replaces the attention of CLIP's last block by
one computed from a vision foundation model's (VFM's) patch features. The defaults are the
reference code's (github mc-lan/ProxyCLIP): DINO ViT-B/8, beta 1.2, gamma 3.0, 336-pixel
windows with a stride of 112, the image's short side at 336.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from openseg_r.segmenters.base import SegmenterKind
from openseg_r.segmenters.dense_clip.options import CLIPWeights


@dataclass(frozen=True)
class VFMChoice:
    """One vision foundation model ProxyCLIP can see through."""

    hub_id: str  # its transformers weights on the Hugging Face hub
    family: str  # "dino" (a ViT read DINO's way) or "dinov2" (DINOv2 with registers)
    summary: str


VFMS: dict[str, VFMChoice] = {
    "dino-vitb8": VFMChoice("facebook/dino-vitb8", "dino", "DINO ViT-B/8 (ProxyCLIP's default)"),
    "dino-vitb16": VFMChoice("facebook/dino-vitb16", "dino", "DINO ViT-B/16"),
    "dinov2-vitb14-reg": VFMChoice("facebook/dinov2-with-registers-base", "dinov2", "DINOv2 ViT-B/14 with 4 registers"),
}
DEFAULT_VFM = "dino-vitb8"
VFMName = Literal[tuple(VFMS)]  # type: ignore[valid-type]


class ProxyCLIPOptions(CLIPWeights):
    """The CLIP, the VFM, the proxy attention's two constants, and the windows."""

    vfm: VFMName = Field(DEFAULT_VFM, description="the vision foundation model whose patch similarities CLIP uses")
    vfm_model: str | None = Field(
        None, description="the VFM's weights: a hub id or a local transformers folder (default: the vfm's hub id)"
    )
    vfm_revision: str | None = Field(None, description="the VFM's hub revision (a branch, tag or commit)")
    beta: float = Field(1.2, description="proxy attention: similarities below beta x their mean are masked")
    gamma: float = Field(3.0, gt=0, description="proxy attention: the temperature's inverse")
    short_side: int = Field(336, ge=1, description="the image's short side is resized to this")
    max_long_side: int = Field(2048, ge=1, description="the long side after resizing is capped at this")
    crop: int = Field(336, ge=1, description="sliding-window size")
    stride: int = Field(112, ge=1, description="sliding-window stride")
    slide: bool = Field(True, description="False runs the whole resized image at once")
    window_batch_size: int | None = Field(
        None, ge=1, description="windows per forward pass (None: 8 on the CPU, 256 on a GPU)"
    )
    max_vfm_tokens: int = Field(
        16384,
        ge=1,
        description="the most VFM patches in one window: the proxy attention holds their square (16384: 1 GiB "
        "in float32); a larger window is refused",
    )
    pamr_steps: int = Field(0, ge=0, le=100, description="PAMR refinement iterations (ProxyCLIP uses none)")
    pamr_dilations: tuple[int, ...] = Field((8, 16), min_length=1, description="PAMR's neighbourhood dilations")

    @property
    def vfm_weights(self) -> str:
        return self.vfm_model or VFMS[self.vfm].hub_id


PROXYCLIP = SegmenterKind(
    name="proxyclip",
    summary="training-free ProxyCLIP: CLIP's last attention taken from a vision foundation model's (DINO's) "
    "patch similarities",
    options=ProxyCLIPOptions,
    build="openseg_r.segmenters.proxyclip.segmenter:build",
    speed_only=("window_batch_size",),
    variants={"vfm": tuple(VFMS)},
)
