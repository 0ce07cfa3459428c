"""SAM 3 (the ``sam3`` kind): a trained concept segmenter behind the reasoning. Options in
``options.py`` (no torch), phrases in ``phrases.py`` (files come through ``segmenters/hub.py``), the
semantic rule in ``merge.py``, the segmenter in ``segmenter.py``."""
