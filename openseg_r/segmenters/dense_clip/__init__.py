"""Dense CLIP, training-free (NACLIP and its relatives): model loading, last-block
variants, sliding windows, scoring, PAMR, and the text-embedding cache.

Names load lazily, so reading the options (the command line's help, the registry)
never imports torch."""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "ATTENTION_VARIANTS": "openseg_r.segmenters.dense_clip.options",
    "SegmenterConfig": "openseg_r.segmenters.dense_clip.options",
    "CLIPSegmenter": "openseg_r.segmenters.dense_clip.segmenter",
    "LoadedCLIP": "openseg_r.segmenters.dense_clip.loading",
    "load_clip": "openseg_r.segmenters.dense_clip.loading",
    "QueryBank": "openseg_r.segmenters.dense_clip.scoring",
    "build_query_bank": "openseg_r.segmenters.dense_clip.scoring",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
