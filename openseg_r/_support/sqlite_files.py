"""Which paths an SQLite store may open, create, or move aside.

The reasoning cache and the text-embedding cache move a corrupt database aside
(``PATH.corrupt-<epoch>``) and start a new one, and every store creates its file when it is
missing. That is only safe for a path that is missing, empty, or an SQLite database (a
regular file whose first 16 bytes are SQLite's header). A folder, a text file, a device,
or another program's database given by mistake is refused with one line and left exactly
as it was: the user's files are never renamed or changed because a flag pointed at them.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

from openseg_r.errors import ConfigError

SQLITE_HEADER = b"SQLite format 3\x00"
# Tables openseg-r itself creates: a database holding any of them (or none at all) is ours
# to use. LangGraph's checkpointer owns ``checkpoints`` and ``writes`` in the runs database.
OWN_TABLES = frozenset({"reasoning", "text_embeddings", "weights_identity", "openseg_runs", "checkpoints", "writes"})


class NotAnSQLiteFileError(ConfigError):
    """A store was pointed at something that is not an SQLite database it may use."""


def check_sqlite_path(path: str | Path, what: str) -> bool:
    """True when an SQLite database is at ``path``; False when there is nothing there yet (a
    missing or empty file, which SQLite creates). Anything else raises
    :class:`NotAnSQLiteFileError` without touching it. ``what`` names the store in the
    message ("the reasoning cache")."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise NotAnSQLiteFileError(f"{what} {path} is a broken symbolic link; refusing to use it") from None
        return False
    except NotADirectoryError:  # a parent is a file: creating the folder reports it
        return False
    except OSError as exc:
        raise NotAnSQLiteFileError(f"{what} {path} cannot be checked: {exc.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise NotAnSQLiteFileError(f"{what} {path} is a folder, not an SQLite file; give a file path")
    if not stat.S_ISREG(info.st_mode):
        raise NotAnSQLiteFileError(
            f"{what} {path} is not a regular file (a device, pipe or socket); refusing to use it"
        )
    if info.st_size == 0:
        return False
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise NotAnSQLiteFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if header != SQLITE_HEADER:
        raise NotAnSQLiteFileError(f"{what} {path} is not an SQLite database; refusing to use or replace it")
    return True


def check_own_tables(connection: sqlite3.Connection, path: str | Path, what: str) -> None:
    """Refuse another program's SQLite database before anything is written to it (a new
    table, the WAL journal mode). Reading the schema of a damaged file raises
    ``sqlite3.DatabaseError``, which the caller treats as corruption."""
    rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
    tables = sorted(row[0] for row in rows)
    if tables and not OWN_TABLES.intersection(tables):
        shown = ", ".join(tables[:5]) + (", …" if len(tables) > 5 else "")
        raise NotAnSQLiteFileError(
            f"{what} {path} is an SQLite database of another program (tables: {shown}); refusing to change it"
        )


def move_aside(path: str | Path, what: str) -> Path:
    """Rename a damaged SQLite database to ``PATH.corrupt-<epoch>`` (``-2``, ``-3``… when that
    name is taken, so an earlier one is never overwritten), its ``-wal`` and ``-shm`` files
    with it, and return the new path. Checked again first: only an SQLite database is
    moved; anything else raises :class:`NotAnSQLiteFileError` and stays where it is.
    ``OSError`` when the rename fails."""
    path = Path(path)
    if not check_sqlite_path(path, what):
        raise FileNotFoundError(f"{path} is missing or empty")
    stem = f"{path.name}.corrupt-{int(time.time())}"
    aside, number = path.with_name(stem), 1
    while aside.exists() or aside.is_symlink():
        number += 1
        aside = path.with_name(f"{stem}-{number}")
    os.replace(path, aside)
    wal = Path(f"{path}-wal")  # may hold the last writes: kept with the database
    if wal.exists():
        os.replace(wal, Path(f"{aside}-wal"))
    Path(f"{path}-shm").unlink(missing_ok=True)  # only an index of the WAL, rebuilt from it
    return aside
