"""Writing files so that a crash never leaves half of one behind."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from openseg_r.errors import ConfigError

NEW_FILE_MODE = 0o666  # what open() asks for; the process umask takes away the rest (0o644 under umask 022)
NAME_TRIES = 16


def write_atomically(path: str | Path, write: Callable[[BinaryIO], object], suffix: str = "") -> None:
    """``write(handle)`` into a temporary file beside ``path``, then rename it into place:
    readers see the old file or the whole new one, never a part.

    The file gets the mode a plain ``open(path, "wb")`` would give it: a new file
    ``0o666`` less the umask (``tempfile`` would make it 0600), a replaced file keeps
    its mode."""
    path = Path(path)
    handle, temporary = _create_beside(path, suffix)
    try:
        with handle:
            write(handle)
            _keep_mode(path, handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _create_beside(path: Path, suffix: str) -> tuple[BinaryIO, Path]:
    """A new hidden file in ``path``'s folder, created with :data:`NEW_FILE_MODE` so that
    the kernel applies the umask, as it does for ``open()`` (reading the umask would
    need ``os.umask``, which changes it for every thread for a moment)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(NAME_TRIES):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            descriptor = os.open(temporary, flags, NEW_FILE_MODE)
        except FileExistsError:
            continue
        return os.fdopen(descriptor, "wb"), temporary
    raise FileExistsError(f"no free temporary name beside {path}")


def _keep_mode(path: Path, descriptor: int) -> None:
    """A file that is replaced keeps its permissions, as it would when rewritten in place."""
    try:
        existing = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(existing.st_mode) and hasattr(os, "fchmod"):
        os.fchmod(descriptor, stat.S_IMODE(existing.st_mode))


class FolderError(ConfigError):
    """An output folder that cannot be made or written (its message is one line)."""


def check_output_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that could not be written: a file, a path
    under a file, a place where folders cannot be made (``/proc``) or not writable. Nothing
    is left behind: folders made to find out are removed again."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FolderError(f"{flag} {path} is a file; give a folder")
    made: list[Path] = []
    try:
        for parent in reversed([path, *path.parents]):
            if parent.is_dir():
                continue
            if parent.exists() or parent.is_symlink():
                raise FolderError(f"{flag} {path}: {parent} is not a folder")
            try:
                parent.mkdir()
            except OSError as exc:
                raise FolderError(f"{flag} {path}: cannot make {parent}: {exc.strerror or exc}") from None
            made.append(parent)
        try:
            probe, name = _create_beside(path / ".openseg-r-write-check", "")
            probe.close()
            name.unlink()
        except OSError as exc:
            raise FolderError(f"{flag} {path}: cannot write there: {exc.strerror or exc}") from None
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
