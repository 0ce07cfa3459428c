"""openseg-r: open-vocabulary segmentation guided by step-by-step visual reasoning (OpenSeg-R)."""

__version__ = "0.1.0"

from openseg_r.facade import OpenSegR  # noqa: E402
from openseg_r.graph import OpenSegContext, build_graph  # noqa: E402
from openseg_r.result import SegmentationResult  # noqa: E402
from openseg_r.state import Settings  # noqa: E402

__all__ = ["OpenSegContext", "OpenSegR", "SegmentationResult", "Settings", "__version__", "build_graph"]
