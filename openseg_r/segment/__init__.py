"""Dense-CLIP segmentation: model loading, last-block variants, sliding windows, scoring."""

from openseg_r.segment.attention import ATTENTION_VARIANTS
from openseg_r.segment.loading import LoadedCLIP, load_clip
from openseg_r.segment.scoring import QueryBank, build_query_bank
from openseg_r.segment.segmenter import CLIPSegmenter, SegmenterConfig
from openseg_r.segmenter_io import ClassFilter, SegmentationArrays

__all__ = [
    "ATTENTION_VARIANTS", "CLIPSegmenter", "ClassFilter", "LoadedCLIP", "QueryBank",
    "SegmentationArrays", "SegmenterConfig", "build_query_bank", "load_clip",
]
