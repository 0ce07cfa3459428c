"""The reasoning cache: generic and image reasoning, keyed by what the answer depends on.

A key is a dict (backend model id and generation parameters, prompt version, class
name or image content hash, ...); its canonical JSON is hashed into the row id.
``SQLiteReasoningCache`` is safe for several processes at once (WAL journal, busy
timeout, one short transaction per call). A corrupt SQLite file is moved aside and
rebuilt (stated in ``events``); a path that is not an SQLite file at all (a folder, a
text file, another program's database) is refused and never touched
(:mod:`openseg_r._support.sqlite_files`). A database that stays locked past the timeout is
treated as a miss, or the write is skipped, and that is recorded in ``events``.
Neither ever stops a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from threading import Lock

from openseg_r._support.sqlite_files import check_own_tables, check_sqlite_path, move_aside
from openseg_r.errors import ConfigError

WHAT = "the reasoning cache"

SCHEMA = """
CREATE TABLE IF NOT EXISTS reasoning (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    subject TEXT NOT NULL,
    key_json TEXT NOT NULL,
    value_json TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reasoning_kind_model ON reasoning (kind, model);
"""


def cache_key(kind: str, key: dict) -> str:
    return hashlib.sha256(json.dumps({"kind": kind, **key}, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class MemoryReasoningCache:
    """Per-process cache (the default when no cache file is given)."""

    path = None

    def __init__(self) -> None:
        self._rows: dict[str, dict] = {}
        self._lock = Lock()
        self.hits = self.misses = 0
        self.events: list[str] = []

    def get(self, kind: str, key: dict) -> dict | None:
        with self._lock:
            value = self._rows.get(cache_key(kind, key))
            self.hits, self.misses = self.hits + (value is not None), self.misses + (value is None)
            return value

    def put(self, kind: str, key: dict, value: dict) -> None:
        with self._lock:
            self._rows[cache_key(kind, key)] = value

    def stats(self) -> dict:
        return {"path": None, "hits": self.hits, "misses": self.misses, "events": list(self.events)}


class SQLiteReasoningCache(MemoryReasoningCache):
    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.timeout = timeout
        check_sqlite_path(self.path, WHAT)  # before anything is created next to it
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the reasoning cache folder {self.path.parent}: {exc.strerror}") from None
        self._open()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        connection.execute("PRAGMA busy_timeout = %d" % int(self.timeout * 1000))
        return connection

    def _open(self) -> None:
        """Create the file or check it. Damage SQLite reports (``DatabaseError``: "not a
        database", "malformed", a failed quick check) rebuilds it; an ``OperationalError``
        (locked, read-only, cannot open) is about access, not damage, so it is an error
        and the file is left alone."""
        try:
            with self._closing() as db:
                check_own_tables(db, self.path, WHAT)  # before WAL mode or the schema are written
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(SCHEMA)
                if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    raise sqlite3.DatabaseError("integrity check failed")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise ConfigError(f"the reasoning cache {self.path} is locked by another process") from None
            raise ConfigError(f"the reasoning cache {self.path} cannot be opened: {exc}") from None
        except sqlite3.DatabaseError as exc:
            self._rebuild(exc)

    def _rebuild(self, exc: Exception) -> None:
        """Move a damaged SQLite file aside and start an empty one. The path is checked
        again first (:func:`move_aside`): only an SQLite database is ever moved."""
        try:
            aside = move_aside(self.path, WHAT)
        except OSError as move_error:
            raise ConfigError(
                f"the reasoning cache {self.path} is unusable ({exc}) and cannot be moved aside: {move_error}"
            ) from None
        self.events.append(f"cache file was unusable ({exc}); moved to {aside.name} and rebuilt")
        with self._closing() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _closing(self):
        return contextlib.closing(self._connect())

    def get(self, kind: str, key: dict) -> dict | None:
        try:
            with self._closing() as db:
                row = db.execute("SELECT value_json FROM reasoning WHERE id = ?", (cache_key(kind, key),)).fetchone()
        except sqlite3.Error as exc:
            self._note(f"read skipped: {exc}")
            row = None
        with self._lock:
            self.hits, self.misses = self.hits + (row is not None), self.misses + (row is None)
        return json.loads(row[0]) if row else None

    def put(self, kind: str, key: dict, value: dict) -> None:
        row = (
            cache_key(kind, key),
            kind,
            str(key.get("model", "")),
            str(key.get("prompt_version", "")),
            str(key.get("subject", "")),
            json.dumps(key, sort_keys=True, ensure_ascii=False),
            json.dumps(value, ensure_ascii=False),
            time.time(),
        )
        try:
            with self._closing() as db:
                db.execute("INSERT OR REPLACE INTO reasoning VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.Error as exc:
            self._note(f"write skipped: {exc}")

    def entries(self, kind: str, model: str | None = None) -> list[tuple[dict, dict]]:
        query, args = "SELECT key_json, value_json FROM reasoning WHERE kind = ?", [kind]
        if model is not None:
            query, args = query + " AND model = ?", args + [model]
        with self._closing() as db:
            rows = db.execute(query + " ORDER BY created", args).fetchall()
        return [(json.loads(k), json.loads(v)) for k, v in rows]

    def models(self, kind: str) -> list[str]:
        with self._closing() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT model FROM reasoning WHERE kind = ?", (kind,))]

    def stats(self) -> dict:
        return super().stats() | {"path": str(self.path)}

    def _note(self, message: str) -> None:
        with self._lock:
            if len(self.events) < 100:
                self.events.append(message)


def open_cache(path: str | Path | None):
    """``None`` or ``"none"``: in memory; anything else: an SQLite file."""
    if path is None or str(path) in ("", "none", ":memory:"):
        return MemoryReasoningCache()
    return SQLiteReasoningCache(path)


def open_reasoning_cache(choice: "str | Path | MemoryReasoningCache | None", *, has_lmm: bool):
    """The one rule every entry point follows. Without an LMM nothing is ever asked, so
    reasoning stays in memory; otherwise ``None`` (or ``none``) keeps it in memory, ``user``
    is the user cache file (:func:`default_cache_path`), a path is that SQLite file, and a
    cache object is used as it is. A path given without an LMM is still checked (nothing
    is created), so a wrong one is reported the first time, not on the first run with an LMM."""
    if choice is not None and not isinstance(choice, (str, Path)):
        return choice
    if not has_lmm:
        if choice is not None and str(choice) not in ("", "none", ":memory:", "user"):
            check_sqlite_path(choice, WHAT)
        return MemoryReasoningCache()
    return open_cache(default_cache_path() if str(choice) == "user" else choice)


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openseg-r" / "reasoning.sqlite"
