"""Segmenters: the protocol every one follows (:mod:`~openseg_r.segmenters.base`), the
registry that names them (:mod:`~openseg_r.segmenters.registry`), the micro-batcher
that shares forward passes between runs (:mod:`~openseg_r.segmenters.batching`), and
one folder per kind (``dense_clip/``)."""
