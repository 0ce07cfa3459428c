"""Evaluation and batch segmentation on a Ray cluster (``pip install "openseg-r[ray]"``).

A Ray Data pipeline reads the samples, and ``map_batches`` runs them through a pool of
actors that each build the model once (:meth:`OpenSegR.from_options`) and evaluate or
segment their batches; the driver writes the records. Ray is imported only when used, so
this package imports without it (docs/design.md, Running on a cluster)."""

from __future__ import annotations

from openseg_r.distributed.cluster import connect
from openseg_r.distributed.eval import run_eval_on_ray, run_panoptic_eval_on_ray
from openseg_r.distributed.segment import segment_dataset, segment_files_on_ray

__all__ = ["connect", "run_eval_on_ray", "run_panoptic_eval_on_ray", "segment_dataset", "segment_files_on_ray"]
