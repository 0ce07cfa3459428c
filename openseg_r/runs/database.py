"""The runs database: LangGraph's SQLite checkpointer plus one row per run, in one file.

    ~/.local/share/openseg-r/runs.sqlite            checkpoints and the ``openseg_runs`` table
    ~/.local/share/openseg-r/runs-artifacts/        content-addressed arrays (see files.py)

A run's id is its LangGraph thread id. Every superstep is checkpointed, so a run that
crashed mid-graph resumes from its last checkpoint, and any run can be replayed from a
node onwards. The database is never rebuilt silently: a corrupt or locked file is a
clear error, because it holds the user's records; a path that is not an SQLite file is
refused untouched. Opened ``read_only``, nothing is created or written: a missing
database is :class:`NoRunsDatabaseError`.

A row records its owner process and a heartbeat (:mod:`openseg_r.runs.owner`), so a run
whose process was killed reads as ``interrupted`` instead of ``running`` forever, and
``created`` (when it started) is kept when it is resumed (``resumed_at``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

from openseg_r._support.sqlite_files import check_own_tables, check_sqlite_path
from openseg_r.errors import ConfigError
from openseg_r.runs.files import FileArtifactStore
from openseg_r.runs.owner import HEARTBEAT_SECONDS, owner_is_gone, this_process

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
    replay_from TEXT,
    resumed_at REAL,
    owner_pid INTEGER,
    owner_host TEXT,
    owner_token TEXT,
    heartbeat REAL,
    output TEXT
);
"""
# Columns added since the first release: a database made before them gets them on open.
ADDED_COLUMNS = {
    "resumed_at": "REAL",
    "owner_pid": "INTEGER",
    "owner_host": "TEXT",
    "owner_token": "TEXT",
    "heartbeat": "REAL",
    "output": "TEXT",
}
STATUSES = ("running", "done", "failed", "waiting")  # waiting: paused on human self-check questions
INTERRUPTED = "interrupted"  # shown, never stored: "running" or "waiting", but its owner process is gone
WHAT = "the runs database"


class RunsDBError(ConfigError):
    """The runs database cannot be used (corrupt, locked, unknown run)."""


class NoRunsDatabaseError(RunsDBError):
    """Reading a runs database that does not exist (nothing is created to read it)."""


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
    resumed_at: float | None = None
    owner_pid: int | None = None
    owner_host: str | None = None
    owner_token: str | None = None
    heartbeat: float | None = None
    output: str | None = None  # the folder the run's files were written to (segment --out), if any

    @property
    def seconds(self) -> float | None:
        """How long its last stretch took: from the start, or from the last resume."""
        return None if self.finished is None else self.finished - (self.resumed_at or self.created)

    @property
    def owner(self) -> str:
        return f"process {self.owner_pid} on {self.owner_host}" if self.owner_pid else "an unknown process"


class RunsDB:
    """Open (or create) a runs database. ``checkpointer`` goes to ``build_graph``;
    ``artifacts`` is the file store the runs' arrays live in. ``read_only`` (for commands
    that only look) opens the file with SQLite's ``mode=ro`` and creates nothing, not even
    its folder; ``create=False`` also refuses a missing database, but may write."""

    heartbeat_seconds = HEARTBEAT_SECONDS

    def __init__(
        self, path: str | Path | None = None, timeout: float = 10.0, *, read_only: bool = False, create: bool = True
    ) -> None:
        self.path = Path(path) if path else default_runs_path()
        self.read_only = read_only
        self.artifacts_folder = self.path.with_name(f"{self.path.stem}-artifacts")
        self._lock = threading.Lock()
        self._owned: set[str] = set()  # running runs this object's process owns: their heartbeat
        self._owned_lock = threading.Lock()
        self._beating: threading.Thread | None = None
        self._closed = threading.Event()
        if not check_sqlite_path(self.path, WHAT) and (read_only or not create):
            raise NoRunsDatabaseError(f"no runs database at {self.path}")
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunsDBError(f"cannot create the runs folder {self.path.parent}: {exc.strerror}") from None
        try:
            # The checkpointer's connection keeps Python's implicit transactions: its
            # put_writes() stores a task's writes in one executemany and commits once, and
            # LangGraph takes a task with any saved write as done. In autocommit mode a
            # SIGKILL between two rows would leave a run that resumes with half a state.
            self.connection = self._connect(timeout, autocommit=False)
            if self.connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            check_own_tables(self.connection, self.path, WHAT)
            from langgraph.checkpoint.sqlite import SqliteSaver

            self.checkpointer = SqliteSaver(self.connection)
            if read_only:
                self._columns = self._table_columns("openseg_runs")
                self.checkpointer.is_setup = True  # its setup() writes; reading needs none of it
                self.checkpointer._has_task_path = "task_path" in self._table_columns("writes")
            else:
                self.connection.execute("PRAGMA journal_mode=WAL")
                self.connection.executescript(SCHEMA)
                self._add_missing_columns()
                self.checkpointer.setup()
            # The run rows get their own connection: the checkpointer owns the first one.
            self._rows = self._connect(timeout)
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

    def _connect(self, timeout: float, autocommit: bool = True) -> sqlite3.Connection:
        if self.read_only:
            target, uri = f"{self.path.absolute().as_uri()}?mode=ro{self._leave_no_trace()}", True
        else:
            target, uri = str(self.path), False
        connection = sqlite3.connect(
            target,
            timeout=timeout,
            check_same_thread=False,
            uri=uri,
            isolation_level=None if autocommit else "DEFERRED",
        )
        connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        return connection

    def _leave_no_trace(self) -> str:
        """A reader of a WAL-mode file would create its ``-wal`` and ``-shm`` files beside it.
        When neither exists, no connection has the file open and every write is in the file
        itself, so it is read as immutable (SQLite then makes neither); otherwise they are
        there already and are used as they are."""
        if Path(f"{self.path}-wal").exists() or Path(f"{self.path}-shm").exists():
            return ""
        return "&immutable=1"

    def _table_columns(self, table: str) -> set[str]:
        return {row[1] for row in self.connection.execute(f"PRAGMA table_info({table})")}

    def _add_missing_columns(self) -> None:
        """Migrate a database made by an older version (two processes may race: fine)."""
        have = self._table_columns("openseg_runs")
        for name, kind in ADDED_COLUMNS.items():
            if name not in have:
                try:
                    self.connection.execute(f"ALTER TABLE openseg_runs ADD COLUMN {name} {kind}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):
                        raise
        self._columns = self._table_columns("openseg_runs")

    def artifacts(self, redact: bool = False) -> FileArtifactStore:
        return FileArtifactStore(self.artifacts_folder, redact=redact)

    # ------------------------------------------------------------------ rows

    def start_run(self, run_id: str, **fields) -> None:
        """A new run's row, owned by this process until :meth:`finish_run`."""
        owner, now = this_process(), time.time()
        fields = {k: json.dumps(v) if k in ("settings", "options") else v for k, v in fields.items()}
        fields |= {"owner_pid": owner.pid, "owner_host": owner.host, "owner_token": owner.token, "heartbeat": now}
        columns = ["run_id", "created", "status", *fields]
        values = [run_id, now, "running", *fields.values()]
        try:
            self._execute(
                f"INSERT INTO openseg_runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
            )
        except sqlite3.IntegrityError:
            raise RunsDBError(f"run {run_id} is already recorded in {self.path}") from None
        self._own(run_id)

    def resume_run(self, run_id: str) -> RunRecord:
        """Mark a recorded run as running again in this process. Its start time stays; the
        resume is recorded in ``resumed_at``. A run whose owner is still alive is refused
        (two processes must not continue one run), and so is one killed before LangGraph
        wrote its first checkpoint (there is no state to continue from)."""
        record = self.get_run(run_id)
        if record.status == "running":
            raise RunsDBError(
                f"run {record.run_id} is still running ({record.owner}); resume it once that process has ended"
            )
        if self.checkpointer.get_tuple({"configurable": {"thread_id": record.run_id, "checkpoint_ns": ""}}) is None:
            raise RunsDBError(
                f"run {record.run_id} stopped before its first checkpoint was written: there is nothing to "
                "resume; run it again"
            )
        owner, now = this_process(), time.time()
        self._execute(
            "UPDATE openseg_runs SET status = 'running', finished = NULL, error = NULL, stopped_at = NULL, "
            "resumed_at = ?, owner_pid = ?, owner_host = ?, owner_token = ?, heartbeat = ? WHERE run_id = ?",
            (now, owner.pid, owner.host, owner.token, now, record.run_id),
        )
        self._own(record.run_id)
        return self.get_run(record.run_id)

    def finish_run(self, run_id: str, status: str, error: str | None = None, stopped_at: str | None = None) -> None:
        """How a run ended, or that it waits for answers: a waiting run stays this process's
        (its heartbeat goes on), so if the process dies meanwhile, readers see it interrupted."""
        assert status in STATUSES
        with self._owned_lock:
            if status != "waiting":
                self._owned.discard(run_id)
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
        if not self._columns:  # read-only, and no run was ever recorded in this file
            return []
        rows = self._query("SELECT * FROM openseg_runs ORDER BY created DESC LIMIT ?", (limit,))
        return [self._record(row) for row in rows]

    def get_run(self, run_id: str) -> RunRecord:
        """By id, or by a unique prefix of at least 4 characters."""
        text = str(run_id).strip()
        if not self._columns:
            raise RunsDBError(f"no run {text!r} in {self.path} (see `openseg-r runs list`)")
        rows = self._query("SELECT * FROM openseg_runs WHERE run_id = ?", (text,))
        if not rows and len(text) >= 4:
            rows = self._query("SELECT * FROM openseg_runs WHERE run_id LIKE ? LIMIT 3", (text.replace("%", "") + "%",))
        if not rows:
            raise RunsDBError(f"no run {text!r} in {self.path} (see `openseg-r runs list`)")
        if len(rows) > 1:
            raise RunsDBError(f"run id prefix {text!r} is ambiguous; give more characters")
        return self._record(rows[0])

    def __enter__(self) -> "RunsDB":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._beating is not None:
            self._beating.join(timeout=5)
        self._rows.close()
        self.connection.close()

    # ------------------------------------------------------------- heartbeat

    def _own(self, run_id: str) -> None:
        """Keep ``run_id``'s heartbeat fresh until it finishes (one thread per database)."""
        with self._owned_lock:
            self._owned.add(run_id)
            if self._beating is None and not self._closed.is_set():
                self._beating = threading.Thread(target=self._beat, name="openseg-r runs heartbeat", daemon=True)
                self._beating.start()

    def _beat(self) -> None:
        while not self._closed.wait(self.heartbeat_seconds):
            with self._owned_lock:
                owned = sorted(self._owned)
                if not owned:  # ends when idle; the next run starts a new one
                    self._beating = None
                    return
            try:
                self._execute(
                    f"UPDATE openseg_runs SET heartbeat = ? WHERE status IN ('running', 'waiting') "
                    f"AND run_id IN ({', '.join('?' * len(owned))})",
                    [time.time(), *owned],
                )
            except (RunsDBError, sqlite3.Error):  # locked or closed: the next beat tries again
                pass

    # --------------------------------------------------------------- records

    def _record(self, row: sqlite3.Row) -> RunRecord:
        data = dict(row)
        data["settings"] = json.loads(data["settings"] or "{}")
        data["options"] = json.loads(data["options"] or "{}")
        data["redact"] = bool(data["redact"])
        record = RunRecord(**{f.name: data[f.name] for f in fields(RunRecord) if f.name in data})
        if record.status in ("running", "waiting") and owner_is_gone(
            record.owner_pid,
            record.owner_host,
            record.owner_token,
            record.heartbeat if record.heartbeat is not None else record.created,
            time.time(),
        ):
            record.status = INTERRUPTED
        return record

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
