"""The web app, ``openseg-r serve web`` (the ``web`` extra): a page where a person uploads an
image, names classes, watches the graph reason node by node, and answers the human
self-check by clicking. ``app`` is the page, ``live`` a page's run, ``trace`` the trace
panel, ``backends`` the LMM backends a page may pick, ``compare`` the bare-name baseline
beside a run, ``server`` the ASGI app and its serving (docs/design.md §4.4)."""
