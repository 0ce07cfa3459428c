"""The persistent text-embedding cache: phrase embeddings kept between processes (dense
CLIP's template-averaged vectors; SAM 3's per-token phrase embeddings), shared by the kinds.

Encoding a vocabulary's prompts is the slowest part of a cold start (116 distinct phrases
x 14 templates for VOC-21 with reasoning), and the result only depends on the text tower's
weights, the templates and the phrase. So vectors are stored in SQLite keyed by
(model identity, template set, phrase); the identity is a hash of the text tower's
weights computed by :mod:`openseg_r.segmenters.dense_clip.text`, which also memoises it here per weights
file so a warm start need not hash 250 MB again.

The file is bounded: at most ``max_bytes`` of vectors (default 256 MB, about 130,000 phrases
of a 512-d text tower). A write that passes the bound drops the least recently used vectors
(a vector read is marked used at most once a day) down to 90% of it, and once a quarter of
the file is free pages it is rewritten smaller (``VACUUM``).

Robustness follows :class:`openseg_r._support.cache.SQLiteReasoningCache`: WAL journal, busy
timeout, one short transaction per call; a corrupt SQLite file is moved aside and rebuilt,
while a path that is not an SQLite file (a folder, a text file, another program's database)
is refused when the store is opened and never touched (:mod:`openseg_r._support.sqlite_files`); a
database that stays locked turns reads into misses and skips writes; a stored vector of
the wrong size or with non-finite values is a miss. Each case is noted in ``events`` and
none ever stops a run. No torch here: this module sits in the support layer.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from threading import Lock

import numpy as np

from openseg_r._support.sqlite_files import NotAnSQLiteFileError, check_own_tables, check_sqlite_path, move_aside
from openseg_r.errors import ConfigError

# About 13 rows of a 512-d vector (2 KB each, plus keys) share a 32 KB page; SQLite's default
# 4 KB page holds only one, which nearly doubles the file. Set before the first table exists.
PAGE_SIZE = 32768
CHUNK = 500  # values per SQL IN (...) list, well under SQLite's variable limit
# The bound: at most this many bytes of vectors (about 130,000 phrases of a 512-d text tower);
# past it, the least recently used go first, down to TRIM_TO of it. A vector read is marked
# used at most once per REFRESH_AFTER_S, so reading stays a read nearly always.
DEFAULT_MAX_BYTES = 256 * 2**20
TRIM_TO = 0.9
REFRESH_AFTER_S = 24 * 3600.0
MAX_IDENTITIES = 1000  # remembered weights identities (one per weights file and loading context)
VACUUM_FREE_SHARE = 0.25  # rewrite the file once a quarter of it is free pages, so it shrinks
MAX_EVENTS = 100
WHAT = "the text-embedding cache"
SCHEMA = """
CREATE TABLE IF NOT EXISTS text_embeddings (
    model TEXT NOT NULL,
    template_set TEXT NOT NULL,
    phrase TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, template_set, phrase)
);
CREATE TABLE IF NOT EXISTS weights_identity (
    key TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    created REAL NOT NULL
);
"""


class SQLiteTextCache:
    """Float32 vectors by (model, template set, phrase) in one SQLite file, shared safely
    by several processes and threads (a fresh connection per call)."""

    def __init__(self, path: str | Path, timeout: float = 10.0, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.hits = self.misses = 0
        self.events: list[str] = []
        self._lock = Lock()
        self._ready = self._disabled = False
        check_sqlite_path(self.path, WHAT)  # before anything is created next to it
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the text-embedding cache folder {self.path.parent}: {exc.strerror}"
            ) from None
        self._open(first=True)

    # ------------------------------------------------------------------ the file

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout = %d" % int(self.timeout * 1000))
        return connection

    def _closing(self):
        return contextlib.closing(self._connect())

    def _open(self, first: bool = False) -> None:
        """Create the file or check that it is one. A lock that outlasts the timeout is
        noted and the next call tries again (so does any other failure to open or write it);
        a damaged SQLite file is moved aside and rebuilt. Another program's database is
        refused on the first open (later, during a run, the store is only switched off).
        No ``PRAGMA quick_check``: it reads the whole file, which may grow to hundreds of
        MB; damage inside is found when a read or write meets it (:meth:`_failed`)."""
        try:
            with self._closing() as db:
                try:
                    check_own_tables(db, self.path, WHAT)  # before WAL mode or the schema are written
                except NotAnSQLiteFileError as refusal:
                    if first:
                        raise
                    self._switch_off(str(refusal))
                    return
                self._create(db)
                db.execute("SELECT COUNT(*) FROM weights_identity").fetchone()
            self._ready = True
        except sqlite3.OperationalError as exc:  # locked, read-only, disk full: try again on the next call
            self._note(f"open deferred: {exc}")
        except sqlite3.DatabaseError as exc:
            self._rebuild(exc)

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        """A read or write failed: noted; a damaged file (SQLite's plain DatabaseError:
        "malformed", "not a database") is also moved aside and rebuilt."""
        self._note(f"{what} skipped: {exc}")
        if type(exc) is sqlite3.DatabaseError:
            self._rebuild(exc)

    @staticmethod
    def _create(db: sqlite3.Connection) -> None:
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # no effect on an existing file
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)

    def _rebuild(self, exc: Exception) -> None:
        """Move the damaged file aside and start an empty one. If that fails too, the run
        goes on without the store (noted), since embeddings can always be computed. The
        path is checked again first: only an SQLite database is ever moved; anything else
        found there (replaced since the store was opened) is left alone."""
        try:
            aside = move_aside(self.path, WHAT)
            with self._closing() as db:
                self._create(db)
        except NotAnSQLiteFileError as refusal:
            self._switch_off(f"{refusal} ({exc})")
            return
        except (OSError, sqlite3.Error) as rebuild_error:
            self._switch_off(f"cache file is unusable ({exc}) and could not be rebuilt ({rebuild_error})")
            return
        self._note(f"cache file was unusable ({exc}); moved to {aside.name} and rebuilt")
        self._ready = True

    def _switch_off(self, why: str) -> None:
        """Go on without the store for the rest of this process (noted once)."""
        self._disabled = True
        self._note(f"{why}; text embeddings are kept in memory only")

    def _usable(self) -> bool:
        if self._disabled:
            return False
        if not self._ready:
            self._open()
        return self._ready

    # ---------------------------------------------------------------- vectors

    def get_many(
        self, model: str, template_set: str, phrases: list[str], dim: int | None = None
    ) -> dict[str, np.ndarray]:
        """The stored vectors among ``phrases`` (read-only float32 arrays). A vector whose
        size is not ``dim`` (when given) or its own recorded dim, or that is not finite,
        counts as a miss; the caller encodes it again and its write replaces the row."""
        wanted = list(dict.fromkeys(phrases))
        found: dict[str, np.ndarray] = {}
        stale: list[str] = []  # found, but last marked used over a day ago
        rejected, now = 0, time.time()
        try:
            if self._usable():
                with self._closing() as db:
                    for start in range(0, len(wanted), CHUNK):
                        chunk = wanted[start : start + CHUNK]
                        rows = db.execute(
                            "SELECT phrase, dim, vector, created FROM text_embeddings WHERE model = ? "
                            f"AND template_set = ? AND phrase IN ({','.join('?' * len(chunk))})",
                            [model, template_set, *chunk],
                        ).fetchall()
                        for phrase, row_dim, blob, created in rows:
                            vector = _vector(row_dim, blob, dim)
                            if vector is None:
                                rejected += 1
                            else:
                                found[phrase] = vector
                                if not isinstance(created, float | int) or now - created > REFRESH_AFTER_S:
                                    stale.append(phrase)
        except sqlite3.Error as exc:
            self._failed("read", exc)
            found = {}
        if rejected:
            self._note(f"{rejected} stored vector(s) of the wrong size or not finite were ignored")
        if stale:
            self._mark_used(model, template_set, stale, now)
        with self._lock:
            self.hits += len(found)
            self.misses += len(wanted) - len(found)
        return found

    def put_many(self, model: str, template_set: str, vectors: dict[str, np.ndarray]) -> None:
        """Store (or replace) float32 vectors, in one transaction."""
        now = time.time()
        rows = []
        for phrase, vector in vectors.items():
            array = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
            if not np.isfinite(array).all():  # it would only be rejected when read
                continue
            rows.append((model, template_set, phrase, int(array.size), array.tobytes(), now))
        if not rows or not self._usable():  # why it is not usable is already noted
            return
        try:
            with self._closing() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for start in range(0, len(rows), CHUNK):
                        db.executemany(
                            "INSERT OR REPLACE INTO text_embeddings VALUES (?, ?, ?, ?, ?, ?)",
                            rows[start : start + CHUNK],
                        )
                    dropped = self._trim(db)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                if dropped:
                    self._note(
                        f"dropped {dropped} least recently used vector(s): the cache holds at most "
                        f"{self.max_bytes / 2**20:g} MB of vectors"
                    )
                    self._shrink(db)
        except sqlite3.Error as exc:
            self._failed(f"write of {len(rows)} vector(s)", exc)

    def _mark_used(self, model: str, template_set: str, phrases: list[str], now: float) -> None:
        """Best effort: a cache that is busy or read-only stays as it is."""
        try:
            with self._closing() as db:
                for start in range(0, len(phrases), CHUNK):
                    chunk = phrases[start : start + CHUNK]
                    db.execute(
                        f"UPDATE text_embeddings SET created = ? WHERE model = ? AND template_set = ? "
                        f"AND phrase IN ({','.join('?' * len(chunk))})",
                        [now, model, template_set, *chunk],
                    )
        except sqlite3.Error:
            pass

    def _trim(self, db: sqlite3.Connection) -> int:
        """Inside the writing transaction: drop the least recently used vectors past the
        bound, down to TRIM_TO of it, and the oldest remembered identities past
        MAX_IDENTITIES. Returns how many vectors went."""
        db.execute(
            "DELETE FROM weights_identity WHERE key NOT IN "
            "(SELECT key FROM weights_identity ORDER BY created DESC LIMIT ?)",
            (MAX_IDENTITIES,),
        )
        total = int(db.execute("SELECT COALESCE(SUM(length(vector)), 0) FROM text_embeddings").fetchone()[0])
        if total <= self.max_bytes:
            return 0
        excess, doomed = total - int(self.max_bytes * TRIM_TO), []
        for rowid, size in db.execute("SELECT rowid, length(vector) FROM text_embeddings ORDER BY created, rowid"):
            if excess <= 0:
                break
            doomed.append(rowid)
            excess -= size
        for start in range(0, len(doomed), CHUNK):
            chunk = doomed[start : start + CHUNK]
            db.execute(f"DELETE FROM text_embeddings WHERE rowid IN ({','.join('?' * len(chunk))})", chunk)
        return len(doomed)

    def _shrink(self, db: sqlite3.Connection) -> None:
        """Give free pages back once they are a quarter of the file (SQLite only reuses them)."""
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        if pages and free / pages >= VACUUM_FREE_SHARE:
            try:
                db.execute("VACUUM")
            except sqlite3.Error as exc:  # another process is reading: it shrinks another time
                self._note(f"could not shrink the file now ({exc})")

    # ------------------------------------------------- weights identity memo

    def recall_identity(self, key: str) -> str | None:
        """A model identity remembered for ``key`` (a weights file's path, size, mtime and
        loading context), or None."""
        try:
            if not self._usable():
                return None
            with self._closing() as db:
                row = db.execute("SELECT identity FROM weights_identity WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._failed("identity read", exc)
            return None
        return row[0] if row else None

    def remember_identity(self, key: str, identity: str) -> None:
        if not self._usable():
            return
        try:
            with self._closing() as db:
                db.execute("INSERT OR REPLACE INTO weights_identity VALUES (?, ?, ?)", (key, identity, time.time()))
        except sqlite3.Error as exc:
            self._failed("identity write", exc)

    # ---------------------------------------------------------------- reporting

    def count(self, model: str | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM text_embeddings", ()
        if model is not None:
            query, args = query + " WHERE model = ?", (model,)
        with self._closing() as db:
            return int(db.execute(query, args).fetchone()[0])

    def stats(self) -> dict:
        with self._lock:
            return {"path": str(self.path), "hits": self.hits, "misses": self.misses, "events": list(self.events)}

    def _note(self, message: str) -> None:
        with self._lock:
            if len(self.events) < MAX_EVENTS:
                self.events.append(message)


def _vector(row_dim: object, blob: object, dim: int | None) -> np.ndarray | None:
    if not isinstance(blob, bytes) or not isinstance(row_dim, int) or row_dim <= 0:
        return None
    if len(blob) != 4 * row_dim or (dim is not None and row_dim != dim):
        return None
    vector = np.frombuffer(blob, dtype=np.float32)
    return vector if np.isfinite(vector).all() else None


def open_text_cache(
    choice: "str | Path | SQLiteTextCache | None", *, random_weights: bool = False
) -> SQLiteTextCache | None:
    """``None``, ``none`` or ``memory``: no store (embeddings live in memory only);
    ``user``: the user cache file (:func:`default_text_cache_path`); a path: that SQLite
    file; a store object is used as it is. With ``random_weights`` there is no store:
    random weights never meet again, so their embeddings stay in memory."""
    if random_weights:
        return None
    if choice is not None and not isinstance(choice, (str, Path)):
        return choice
    if choice is None or str(choice).strip().lower() in ("", "none", "memory", ":memory:"):
        return None
    return SQLiteTextCache(default_text_cache_path() if str(choice) == "user" else choice)


def default_text_cache_path() -> Path:
    """Next to the reasoning cache (:func:`openseg_r._support.cache.default_cache_path`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openseg-r" / "text_embeddings.sqlite"
