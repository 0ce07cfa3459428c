"""Content-addressed arrays on disk, next to the runs database.

Checkpoints hold only keys; the label maps, probability summaries, masks, crops and
the input image live here as ``<key[:2]>/<key>.npy`` files, written whole or not at
all. A key is the SHA-256 of the array's dtype, shape and bytes, so the same array is
stored once however many runs use it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from openseg_r._support.files import write_atomically
from openseg_r._support.store import ArtifactStore


class MissingArtifactError(KeyError):
    """An array a run refers to is not in the store (deleted, or redacted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "artifact missing"


class FileArtifactStore(ArtifactStore):
    """An :class:`ArtifactStore` whose arrays are also files. With ``redact``, arrays of
    kind ``"image"`` stay in memory only (the database keeps their hashes)."""

    def __init__(self, folder: str | Path, redact: bool = False) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.redact = redact  # the folder is made by the first put(): reading creates nothing

    def path_for(self, key: str) -> Path:
        if not isinstance(key, str) or len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise MissingArtifactError(f"not an artifact key: {key[:70]!r}")
        return self.folder / key[:2] / f"{key}.npy"

    def put(self, array: np.ndarray, kind: str = "array") -> str:
        key = super().put(array, kind)
        if self.redact and kind == "image":
            return key
        path = self.path_for(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False), ".npy")
        return key

    def get(self, key: str) -> np.ndarray:
        with self._lock:
            if key in self._arrays:
                return self._arrays[key]
        path = self.path_for(key)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise MissingArtifactError(f"artifact {key[:12]}… is missing from the store ({path})") from None
        except (OSError, ValueError) as exc:
            raise MissingArtifactError(f"artifact {key[:12]}… is unreadable ({path}: {exc})") from None
        array.setflags(write=False)
        with self._lock:
            self._arrays[key] = array
        return array

    def __contains__(self, key: str) -> bool:
        try:
            if key in self._arrays:
                return True
            return self.path_for(key).exists()
        except MissingArtifactError:
            return False

    def forget_memory(self) -> None:
        """Drop the in-memory copies (a long-lived process keeps only what is on disk)."""
        with self._lock:
            self._arrays.clear()
