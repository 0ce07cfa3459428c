"""ProxyCLIP (the ``proxyclip`` kind): CLIP's last attention taken from a vision foundation
model's patch similarities. Options in ``options.py`` (no torch), the VFMs in ``vfm.py``,
the proxy attention in ``attention.py``, the two towers joined in ``encoder.py``, the
segmenter in ``segmenter.py`` (dense CLIP's, with this encoder)."""
