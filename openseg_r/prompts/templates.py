"""CLIP sentence templates. ``{}`` is replaced by a class phrase."""

from __future__ import annotations

from functools import cache

from openseg_r.errors import ConfigError

# The 14 ViLD-style sentences used by open-vocabulary segmenters (OVSeg, CAT-Seg, OpenSeg-R).
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

TEMPLATE_SET_NAMES = ("vild", "imagenet")


@cache
def imagenet_templates() -> tuple[str, ...]:
    """The 80 OpenAI ImageNet templates, taken from open_clip so they match it exactly
    (read on first use: importing open_clip imports torch)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


def templates_for(name: str) -> tuple[str, ...]:
    if name == "vild":
        return VILD_TEMPLATES
    if name == "imagenet":
        return imagenet_templates()
    raise ConfigError(f"unknown template set {name!r}; choose from {', '.join(TEMPLATE_SET_NAMES)}")
