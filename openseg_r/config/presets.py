"""Evaluation protocols: the settings behind a published table, per benchmark.

NACLIP's published mIoU (ViT-B/16, OpenAI weights; ``test_all.sh reduced naclip 5 on``)
comes from per-benchmark settings in its configs: the image's short side (336, 560 for
Cityscapes; the long side at most 2048), the whole image for VOC20/VOC21 and 224/112
windows elsewhere, a background threshold (``prob_thd``) of 0.1 for VOC21, PC60 and
COCO-Object, its own class-name files (the built-in vocabularies are the same lists),
the 80 ImageNet templates with the softmax over all names before the max over each
class's names, and PAMR (10 iterations, dilations 8 and 16) on the logits.

ProxyCLIP's (``proxyclip`` segmenter; github mc-lan/ProxyCLIP configs) are its
``cfg_*.py``: the short side at 336 (448 for ADE20K, Cityscapes, PC459 and ADE847),
336/112 windows (224/112 for Cityscapes), ``prob_thd`` 0.2 for VOC21, 0.15 for PC60, 0.25
for COCO-Object, its own class lists for VOC21, VOC20 and COCO-Object, DINO ViT-B/8 with
beta 1.2 and gamma 3.0, the 80 ImageNet templates with the softmax over all names before
the max over each class's names, logit scale 40, no PAMR.

A :class:`Protocol` holds those as the segmenter kind's options and :class:`Settings`
fields, and pins fp32 on a CPU (where ``auto`` would pick bf16). ``openseg-r eval
--dataset X`` applies X's protocol for the segmenter in use by default (``--protocol
none`` turns it off, single flags override single fields); ``--protocol naclip`` or
``proxyclip`` names the family (the dataset's one), ``naclip-X`` or ``proxyclip-X`` one
protocol; ``segment --protocol X`` and :meth:`Protocol.apply` do the same for one image or
from Python.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from openseg_r.config.options import ModelOptions
from openseg_r.config.settings import Settings, merged_settings
from openseg_r.errors import ConfigError

NACLIP_TEXT = {"templates": "imagenet", "score_order": "softmax_then_max", "logit_scale": 40.0}
NACLIP_PAMR = {"pamr_steps": 10, "pamr_dilations": (8, 16)}
NACLIP_WINDOWS = {"slide": True, "crop": 224, "stride": 112}


class Protocol(BaseModel):
    """Segmenter and scoring settings that reproduce a published evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    source: str = Field(description="where the settings come from")
    vocabulary: str = Field(description="the built-in vocabulary with the benchmark's class names")
    segmenter: str = Field("dense-clip", description="the segmenter kind the published numbers were made with")
    segmenter_options: dict = Field(default_factory=dict, description="that kind's options")
    settings: dict = Field(default_factory=dict, description="Settings fields")

    def apply(self, options: ModelOptions, settings: Settings | None = None) -> tuple[ModelOptions, Settings]:
        """``options`` with the protocol's segmenter options, and ``settings`` (default: the
        defaults) with its scoring fields; apply single-field overrides after this. A model of
        another segmenter kind is refused in one line: the published numbers are not its."""
        if options.segmenter != self.segmenter:
            raise ConfigError(
                f"the {self.name} protocol holds {self.segmenter} settings, not the {options.segmenter} "
                "segmenter's: give --protocol none"
            )
        applied = options.with_overrides(segmenter_options=self.segmenter_options)
        if applied.precision == "auto" and _on_cpu(applied.device):  # the published numbers are fp32 there
            applied = applied.with_overrides(precision="fp32")
        return applied, merged_settings(settings or Settings(), self.settings)

    def describe(self) -> dict:
        """Every field the protocol sets, for reports."""
        return {
            "name": self.name,
            "source": self.source,
            "vocabulary": self.vocabulary,
            "segmenter": self.segmenter,
            "segmenter_options": dict(self.segmenter_options),
            "settings": dict(self.settings),
        }


def _on_cpu(device: str | None) -> bool:
    if device is not None and device != "auto":
        return str(device).startswith("cpu")
    import torch

    return not torch.cuda.is_available()


def _naclip(dataset: str, *, short_side: int = 336, whole_image: bool = False, background: float = 0.0) -> Protocol:
    windows = {"slide": False} if whole_image else NACLIP_WINDOWS
    return Protocol(
        name=f"naclip-{dataset}",
        source="NACLIP (WACV 2025) configs, test_all.sh reduced naclip 5 on",
        vocabulary=dataset,
        segmenter_options={
            "attention": "naclip",
            "gaussian_sigma": 5.0,
            "short_side": short_side,
            "max_long_side": 2048,
            **windows,
            **NACLIP_PAMR,
        },
        settings={**NACLIP_TEXT, "background_threshold": background},
    )


def _proxyclip(
    dataset: str, *, short_side: int = 336, crop: int = 336, background: float = 0.0, vocabulary: str | None = None
) -> Protocol:
    return Protocol(
        name=f"proxyclip-{dataset}",
        source="ProxyCLIP (ECCV 2024) configs/cfg_*.py and base_config.py (DINO ViT-B/8)",
        vocabulary=vocabulary or dataset,
        segmenter="proxyclip",
        segmenter_options={
            "vfm": "dino-vitb8",
            "beta": 1.2,
            "gamma": 3.0,
            "short_side": short_side,
            "max_long_side": 2048,
            "slide": True,
            "crop": crop,
            "stride": 112,
            "pamr_steps": 0,
        },
        settings={**NACLIP_TEXT, "background_threshold": background},
    )


PROTOCOLS: dict[str, Protocol] = {
    "voc21": _naclip("voc21", whole_image=True, background=0.1),
    "voc20": _naclip("voc20", whole_image=True),
    "pc60": _naclip("pc60", background=0.1),
    "pc59": _naclip("pc59"),
    "coco_object": _naclip("coco_object", background=0.1),
    "coco_stuff171": _naclip("coco_stuff171"),
    "ade150": _naclip("ade150"),
    "cityscapes": _naclip("cityscapes", short_side=560),
}
PROXYCLIP_PROTOCOLS: dict[str, Protocol] = {
    "voc21": _proxyclip("voc21", background=0.2, vocabulary="proxyclip_voc21"),
    "voc20": _proxyclip("voc20", vocabulary="proxyclip_voc20"),
    "pc60": _proxyclip("pc60", background=0.15),
    "pc59": _proxyclip("pc59"),
    "coco_object": _proxyclip("coco_object", background=0.25, vocabulary="proxyclip_coco_object"),
    "coco_stuff171": _proxyclip("coco_stuff171"),
    "ade150": _proxyclip("ade150", short_side=448),
    "cityscapes": _proxyclip("cityscapes", short_side=448, crop=224),
    "pc459": _proxyclip("pc459", short_side=448),
    "ade847": _proxyclip("ade847", short_side=448),
}
FAMILIES: dict[str, dict[str, Protocol]] = {"naclip": PROTOCOLS, "proxyclip": PROXYCLIP_PROTOCOLS}
KIND_FAMILY = {"dense-clip": "naclip", "proxyclip": "proxyclip"}  # the published protocols of each segmenter kind
NONE = "none"


def protocol_for(name: str, dataset: str | None = None) -> Protocol | None:
    """A protocol by name: a dataset (NACLIP's), ``naclip-X`` or ``proxyclip-X``, or a family
    (``naclip``, ``proxyclip``) with ``dataset``; None for ``none``."""
    key = name.strip().lower().replace("-", "_")
    if key == NONE:
        return None
    family, _, rest = key.partition("_")
    if family not in FAMILIES:
        family, rest = "naclip", key
    table = FAMILIES[family]
    if not rest:
        if dataset is None:
            raise ConfigError(f"the {family} protocol is per benchmark: name one ({family}-voc21, ...)")
        rest = dataset.strip().lower().replace("-", "_")
        if rest not in table:
            raise ConfigError(f"{family} published no protocol for {dataset}; it has: {', '.join(table)}")
    if rest not in table:
        choices = [*PROTOCOLS, *(f"{f}-{d}" for f, t in FAMILIES.items() if f != "naclip" for d in t)]
        raise ConfigError(f"no protocol {name!r}; choose one of: {', '.join(choices)}, naclip, proxyclip, or none")
    return table[rest]


def published_protocol(dataset: str, kind: str) -> Protocol | None:
    """The protocol published for ``dataset`` with segmenter ``kind``, if there is one."""
    family = KIND_FAMILY.get(kind)
    return FAMILIES[family].get(dataset) if family else None
