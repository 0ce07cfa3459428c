"""Panoptic segmentation: things as instances, stuff as regions (``build.py``), written in
the COCO panoptic format (``files.py``), and scored by panoptic quality (``quality.py``)."""
