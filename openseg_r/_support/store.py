"""Content-addressed store for the arrays that must not live in graph state.

Graph state holds the key (a SHA-256 of dtype, shape and bytes); the arrays live
here. This in-memory store is what a single run needs; it is handed to the nodes
through the runtime context. :class:`openseg_r.runs.files.FileArtifactStore` keeps
them on disk, next to a runs database.

``kind`` says what an array is: ``"image"`` for pictures of the photo (the input and
the self-check's crops), which a redacted run never writes to disk.
"""

from __future__ import annotations

import hashlib
from threading import Lock

import numpy as np


class ArtifactStore:
    """Holds numpy arrays by content key. Safe to share between threads."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._lock = Lock()

    @staticmethod
    def key_for(array: np.ndarray) -> str:
        digest = hashlib.sha256()
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def put(self, array: np.ndarray, kind: str = "array") -> str:
        array = np.ascontiguousarray(array)
        key = self.key_for(array)
        array.setflags(write=False)
        with self._lock:
            self._arrays.setdefault(key, array)
        return key

    def get(self, key: str) -> np.ndarray:
        with self._lock:
            try:
                return self._arrays[key]
            except KeyError:
                raise KeyError(f"artifact {key[:12]}… is not in the store") from None

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def __len__(self) -> int:
        return len(self._arrays)
