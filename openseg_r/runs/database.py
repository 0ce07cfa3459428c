"""The runs database: LangGraph's SQLite checkpointer plus one row per run, in one file.

    ~/.local/share/openseg-r/runs.sqlite            checkpoints and the ``openseg_runs`` table
    ~/.local/share/openseg-r/runs-artifacts/        content-addressed arrays (see files.py)

A run's id is its LangGraph thread id. Every superstep is checkpointed, so a run that
crashed mid-graph resumes from its last checkpoint, and any run can be replayed from a
node onwards. The database is never rebuilt silently: a corrupt or locked file is a
clear error, because it holds the user's records.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from openseg_r.errors import ConfigError
from openseg_r.runs.files import FileArtifactStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS openseg_runs (
    run_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    image TEXT,
    image_key TEXT,
    vocabulary TEXT,
    classes INTEGER,
    backend TEXT,
    settings TEXT,
    options TEXT,
    redact INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    stopped_at TEXT,
    parent_run TEXT,
    replay_from TEXT
);
"""
STATUSES = ("running", "done", "failed", "waiting")  # waiting: paused on human self-check questions


class RunsDBError(ConfigError):
    """The runs database cannot be used (corrupt, locked, unknown run)."""


def default_runs_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "openseg-r" / "runs.sqlite"


@dataclass
class RunRecord:
    run_id: str
    created: float
    finished: float | None
    status: str
    image: str | None
    image_key: str | None
    vocabulary: str | None
    classes: int | None
    backend: str | None
    settings: dict
    options: dict
    redact: bool
    error: str | None
    stopped_at: str | None
    parent_run: str | None
    replay_from: str | None

    @property
    def seconds(self) -> float | None:
        return None if self.finished is None else self.finished - self.created


class RunsDB:
    """Open (or create) a runs database. ``checkpointer`` goes to ``build_graph``;
    ``artifacts`` is the file store the runs' arrays live in."""

    def __init__(self, path: str | Path | None = None, timeout: float = 10.0) -> None:
        self.path = Path(path) if path else default_runs_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunsDBError(f"cannot create the runs folder {self.path.parent}: {exc.strerror}") from None
        self.artifacts_folder = self.path.with_name(f"{self.path.stem}-artifacts")
        self._lock = threading.Lock()
        try:
            self.connection = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            self.connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if self.connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.executescript(SCHEMA)
            from langgraph.checkpoint.sqlite import SqliteSaver

            self.checkpointer = SqliteSaver(self.connection)
            self.checkpointer.setup()
            # The run rows get their own connection: the checkpointer owns the first one.
            self._rows = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            self._rows.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._rows.row_factory = sqlite3.Row
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise RunsDBError(f"the runs database {self.path} is locked by another process; try again") from None
            raise RunsDBError(f"the runs database {self.path} cannot be opened: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise RunsDBError(
                f"the runs database {self.path} is corrupt ({exc}); move it aside to start a new one "
                "(nothing was changed)"
            ) from None

    def artifacts(self, redact: bool = False) -> FileArtifactStore:
        return FileArtifactStore(self.artifacts_folder, redact=redact)

    # ------------------------------------------------------------------ rows

    def start_run(self, run_id: str, **fields) -> None:
        fields = {k: json.dumps(v) if k in ("settings", "options") else v for k, v in fields.items()}
        columns = ["run_id", "created", "status", *fields]
        values = [run_id, time.time(), "running", *fields.values()]
        self._execute(
            f"INSERT OR REPLACE INTO openseg_runs ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})",
            values,
        )

    def finish_run(self, run_id: str, status: str, error: str | None = None, stopped_at: str | None = None) -> None:
        assert status in STATUSES
        self._execute(
            "UPDATE openseg_runs SET status = ?, finished = ?, error = ?, stopped_at = ? WHERE run_id = ?",
            (status, time.time(), error, stopped_at, run_id),
        )

    def require_image(self, record: RunRecord) -> None:
        """A run can be continued only while its image is in the store."""
        if record.image_key not in self.artifacts(record.redact):
            why = "it was recorded with --redact" if record.redact else "its image is missing from the store"
            raise RunsDBError(f"run {record.run_id} cannot be continued: {why} ({self.artifacts_folder})")

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        rows = self._query("SELECT * FROM openseg_runs ORDER BY created DESC LIMIT ?", (limit,))
        return [self._record(row) for row in rows]

    def get_run(self, run_id: str) -> RunRecord:
        """By id, or by a unique prefix of at least 4 characters."""
        text = str(run_id).strip()
        rows = self._query("SELECT * FROM openseg_runs WHERE run_id = ?", (text,))
        if not rows and len(text) >= 4:
            rows = self._query("SELECT * FROM openseg_runs WHERE run_id LIKE ? LIMIT 3", (text.replace("%", "") + "%",))
        if not rows:
            raise RunsDBError(f"no run {text!r} in {self.path} (see `openseg-r runs list`)")
        if len(rows) > 1:
            raise RunsDBError(f"run id prefix {text!r} is ambiguous; give more characters")
        return self._record(rows[0])

    def close(self) -> None:
        self._rows.close()
        self.connection.close()

    def _record(self, row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        data["settings"] = json.loads(data["settings"] or "{}")
        data["options"] = json.loads(data["options"] or "{}")
        data["redact"] = bool(data["redact"])
        return RunRecord(**data)

    def _execute(self, sql: str, params) -> None:
        with self._lock:
            try:
                self._rows.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise RunsDBError(
                        f"the runs database {self.path} is locked by another process; try again"
                    ) from None
                raise RunsDBError(f"the runs database {self.path} could not be written: {exc}") from None

    def _query(self, sql: str, params) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._rows.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise RunsDBError(f"the runs database {self.path} could not be read: {exc}") from None
