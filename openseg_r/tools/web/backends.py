"""The LMM backends a page may pick.

A backend spec names a server to connect to or a file to read (``openai:m@http://host/v1``,
``hf:/path``, ``replay:FILE``), so a spec typed into a page is untrusted: the page offers the
server's own backend, ``none``, and the ones its operator listed (``--lmm-choice``); any other
spec only on a server started with ``--allow-any-lmm``. Every choice shares the loaded
segmenter and micro-batcher (:meth:`OpenSegR.with_lmm`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from openseg_r.errors import OpenSegRError, clipped
from openseg_r.model import OpenSegR
from openseg_r.tools.safety import ToolInputError

NO_LMM = "none"
MAX_TYPED_BACKENDS = 8  # backends typed into pages that are kept built


class BackendChoices:
    def __init__(self, model: OpenSegR, listed: list[str] | None = None, *, allow_any: bool = False) -> None:
        self.model = model
        self.default = model.options.lmm or NO_LMM
        self.allow_any = allow_any
        self.choices = list(dict.fromkeys([self.default, *(spec.strip() for spec in listed or ()), NO_LMM]))
        self._built: dict[str, OpenSegR] = {self.default: model}
        for spec in self.choices[1:]:  # a bad listed spec fails when the server starts, not on a page
            self._built[spec] = model.with_lmm(spec)
        self._typed: OrderedDict[str, OpenSegR] = OrderedDict()
        self._lock = threading.Lock()

    def model_for(self, spec: str | None) -> OpenSegR:
        """The model asking ``spec`` (empty: the server's own); one line if it is not offered."""
        spec = (spec or "").strip() or self.default
        if spec in self._built:
            return self._built[spec]
        if not self.allow_any:
            raise ToolInputError(
                f"the LMM backend {clipped(spec, 60)!r} is not offered by this server; "
                f"choose one of: {', '.join(self.choices)}"
            )
        with self._lock:
            if spec not in self._typed:
                try:
                    self._typed[spec] = self.model.with_lmm(spec)
                except OpenSegRError as exc:
                    raise ToolInputError(str(exc)) from None
                while len(self._typed) > MAX_TYPED_BACKENDS:
                    self._typed.popitem(last=False)
            return self._typed[spec]
