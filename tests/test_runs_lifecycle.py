"""A recorded run's life: its owner process and heartbeat, ``interrupted`` when that process
is gone (a real CLI run killed with SIGKILL), a resume that keeps the start time, older
databases migrated, and reading commands that create and write nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from loopback import silent_server

from openseg_r.config.options import ModelOptions
from openseg_r.runs import RunsDB, RunsDBError
from openseg_r.runs.database import NoRunsDatabaseError
from openseg_r.runs.owner import STALE_AFTER_SECONDS, process_token

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")


def cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def row_line(listing: str, run_id: str) -> str:
    return next(line for line in listing.splitlines() if line.startswith(run_id[:12]))


def test_a_killed_run_shows_interrupted_and_resumes_with_its_start_time(tmp_path, tiny_model_files):
    config, weights = tiny_model_files
    db_path = tmp_path / "runs.sqlite"
    server = silent_server()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openseg_r.cli",
                "segment",
                str(ROOT / "examples" / "voc.jpg"),
                "--vocab",
                "voc21",
                "--lmm",
                f"openai:somemodel@http://127.0.0.1:{server.port}/v1",
                "--clip-model",
                str(config),
                "--clip-pretrained",
                str(weights),
                "--runs-db",
                str(db_path),
                "--out",
                str(tmp_path / "killed"),
            ],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.called.wait(240), "the run never asked the LMM"
            assert proc.poll() is None
            with RunsDB(db_path, read_only=True) as db:
                (running,) = db.list_runs()
                assert running.status == "running" and running.owner_pid == proc.pid
                assert running.owner_token == process_token(proc.pid)
                checkpointed = threading.Event()  # LangGraph writes checkpoints in the background
                for _ in range(600):
                    if db.checkpointer.get_tuple({"configurable": {"thread_id": running.run_id}}):
                        checkpointed.set()
                        break
                    time.sleep(0.1)
            assert checkpointed.is_set() and proc.poll() is None  # still inside its first LMM call
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(60)
    finally:
        server.close()
    assert proc.returncode == -signal.SIGKILL

    listing = cli("runs", "--runs-db", db_path, "list")
    assert listing.returncode == 0, listing.stderr
    line = row_line(listing.stdout, running.run_id)
    assert " interrupted " in line and " running " not in line
    show = cli("runs", "--runs-db", db_path, "show", running.run_id[:12])
    assert show.returncode == 0, show.stderr
    assert f"run {running.run_id}  interrupted" in show.stdout
    assert f"its process {proc.pid} on {socket.gethostname()} is gone" in show.stdout
    report = cli("runs", "--runs-db", db_path, "report", running.run_id, "-o", tmp_path / "report.html")
    assert report.returncode == 0, report.stderr
    assert "<div id=status class='banner interrupted'><b>interrupted</b>" in (tmp_path / "report.html").read_text()

    assert not (tmp_path / "killed").exists()  # killed before it wrote anything
    resumed = cli(
        "runs",
        "--runs-db",
        db_path,
        "resume",
        running.run_id[:12],
        "--lmm",
        f"scripted:{SCRIPT}",
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
    )  # no --out: the run's own
    assert resumed.returncode == 0, resumed.stderr
    assert {p.name for p in (tmp_path / "killed").iterdir()} >= {"labels.png", "overlay.png", "result.json"}
    assert f"run {running.run_id} (resumed)" in resumed.stdout
    with RunsDB(db_path, read_only=True) as db:
        done = db.get_run(running.run_id)
    assert done.status == "done" and done.created == running.created  # the original start time
    assert done.resumed_at is not None and done.resumed_at > running.created
    assert done.finished >= done.resumed_at and done.seconds == pytest.approx(done.finished - done.resumed_at)
    again = cli("runs", "--runs-db", db_path, "list")
    assert " done " in row_line(again.stdout, running.run_id) and "[resumed " in again.stdout


def test_a_run_killed_before_its_first_checkpoint_is_a_clear_error(tmp_path, tiny_model_files):
    db_path = tmp_path / "runs.sqlite"
    config, weights = tiny_model_files
    options = ModelOptions(clip_model=str(config), clip_pretrained=str(weights), device="cpu").recorded()
    with RunsDB(db_path) as db:  # a row as `segment` writes it, killed before any checkpoint
        key = db.artifacts().put(np.zeros((8, 8, 3), np.uint8), kind="image")
        db.start_run("0123456789ab", image="a.jpg", image_key=key, options=options)
        fake_owner(db, "0123456789ab", owner_pid=0, heartbeat=0)  # its process is long gone
    proc = cli(
        "runs", "--runs-db", db_path, "resume", "0123456789ab", "--clip-model", config, "--clip-pretrained", weights
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "openseg-r: error: run 0123456789ab stopped before its first checkpoint was "
        "written: there is nothing to resume; run it again"
    )
    with RunsDB(db_path, read_only=True) as db:
        assert db.get_run("0123456789ab").status == "interrupted"  # left as it was


KILLED_WHILE_WRITING = """
import os, signal, sys
from openseg_r.runs import RunsDB

db = RunsDB(sys.argv[1])
db.connection.create_function("die", 0, lambda: os.kill(os.getpid(), signal.SIGKILL))
db.connection.execute("CREATE TEMP TRIGGER die_after_first AFTER INSERT ON writes WHEN NEW.idx = 1 "
                      "BEGIN SELECT die(); END")
config = {"configurable": {"thread_id": "t1", "checkpoint_ns": "", "checkpoint_id": "c1"}}
db.checkpointer.put_writes(config, [("image", "x"), ("vocabulary", "y"), ("settings", "z")], task_id="start")
"""


def test_a_task_s_writes_are_all_saved_or_none_when_the_process_is_killed(tmp_path):
    """LangGraph treats a task with any saved write as done; a SIGKILL between two of its
    writes must not leave a resumable run with half a state (image gone, lists there)."""
    path = tmp_path / "runs.sqlite"
    RunsDB(path).close()
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WHILE_WRITING, str(path)], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT COUNT(*) FROM writes").fetchone()[0] == 0
    connection.close()


# --------------------------------------------------------------------------- owners


def fake_owner(db: RunsDB, run_id: str, **columns) -> None:
    """Rewrite a row's owner columns with SQL, as another process or host would have left them."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with sqlite3.connect(db.path) as connection:
        connection.execute(f"UPDATE openseg_runs SET {assignments} WHERE run_id = ?", [*columns.values(), run_id])
    connection.close()


def checkpoint(db: RunsDB, run_id: str) -> None:
    """A first checkpoint for a run, as LangGraph writes one when the graph starts."""
    from langgraph.checkpoint.base import empty_checkpoint

    db.checkpointer.put({"configurable": {"thread_id": run_id, "checkpoint_ns": ""}}, empty_checkpoint(), {}, {})


def test_own_live_run_is_running_and_cannot_be_resumed_twice(tmp_path):
    db = RunsDB(tmp_path / "runs.sqlite")
    db.start_run("r1", image="a.jpg")
    checkpoint(db, "r1")
    record = db.get_run("r1")
    assert record.status == "running" and record.owner_pid == os.getpid()
    assert record.owner_host == socket.gethostname() and record.heartbeat is not None
    other = RunsDB(tmp_path / "runs.sqlite")  # a second process-like opener
    with pytest.raises(RunsDBError, match=f"run r1 is still running \\(process {os.getpid()} on "):
        other.resume_run("r1")
    db.finish_run("r1", "failed", error="boom")
    resumed = other.resume_run("r1")
    assert resumed.status == "running" and resumed.created == record.created and resumed.resumed_at >= record.created
    assert resumed.error is None and resumed.finished is None
    with pytest.raises(RunsDBError, match="already recorded"):
        db.start_run("r1", image="again")


def test_a_dead_pid_and_a_reused_pid_are_interrupted(tmp_path):
    db = RunsDB(tmp_path / "runs.sqlite")
    for run_id in ("dead", "reused", "alive"):
        db.start_run(run_id, image="a.jpg")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(finished.stdout)
    token = process_token(os.getpid())
    assert token is not None
    machine, started = token.rsplit("|", 1)
    fake_owner(db, "dead", owner_pid=gone_pid, owner_token=f"{machine}|1")  # heartbeats are fresh: pids decide
    fake_owner(db, "reused", owner_token=f"{machine}|{int(started) - 100}")  # our pid, an older process
    statuses = {r.run_id: r.status for r in db.list_runs()}
    assert statuses == {"dead": "interrupted", "reused": "interrupted", "alive": "running"}


def test_other_hosts_go_by_heartbeat(tmp_path):
    db = RunsDB(tmp_path / "runs.sqlite")
    now = time.time()
    for run_id, beat in (("fresh", now - 5), ("stale", now - STALE_AFTER_SECONDS - 5)):
        db.start_run(run_id, image="a.jpg")
        fake_owner(db, run_id, owner_host="another-host", owner_pid=1, owner_token="x|y|1", heartbeat=beat)
    statuses = {r.run_id: r.status for r in db.list_runs()}
    assert statuses == {"fresh": "running", "stale": "interrupted"}


def test_a_waiting_run_is_kept_alive_by_its_process_and_interrupted_when_it_dies(tmp_path):
    db = RunsDB(tmp_path / "runs.sqlite")
    db.heartbeat_seconds = 0.05
    db.start_run("asking", image="a.jpg")
    db.finish_run("asking", "waiting")  # paused on questions for a person
    first = db.get_run("asking").heartbeat
    deadline = time.monotonic() + 30
    while db.get_run("asking").heartbeat == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.get_run("asking").status == "waiting" and db.get_run("asking").heartbeat > first
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    machine = process_token(os.getpid()).rsplit("|", 1)[0]
    fake_owner(db, "asking", owner_pid=int(gone.stdout), owner_token=f"{machine}|1")
    assert db.get_run("asking").status == "interrupted"
    db.close()


def test_a_human_self_check_killed_while_waiting_reads_interrupted(tmp_path, tiny_model_files):
    """`segment --self-check-mode human` asks at the terminal; killed there, its run is not left waiting."""
    config, weights = tiny_model_files
    db_path = tmp_path / "runs.sqlite"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "segment",
            str(ROOT / "examples" / "voc.jpg"),
            "--vocab",
            "voc21",
            "--no-reasoning",
            "--self-check",
            "--self-check-mode",
            "human",
            "--self-check-margin",
            "0.9",
            "--clip-model",
            str(config),
            "--clip-pretrained",
            str(weights),
            "--runs-db",
            str(db_path),
            "--out",
            str(tmp_path / "out"),
        ],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        status = None
        while status != "waiting":
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
            try:  # the file may exist a moment before it is a database
                with RunsDB(db_path, read_only=True) as db:
                    status = next((r.status for r in db.list_runs()), None)
            except NoRunsDatabaseError:
                continue
        proc.kill()
        proc.wait(30)
    finally:
        proc.kill()
    listing = cli("runs", "--runs-db", db_path, "list")
    assert " interrupted " in listing.stdout and " waiting " not in listing.stdout, listing.stdout


def test_a_run_that_exits_4_is_recorded_as_failed(tmp_path, tiny_model_files):
    config, weights = tiny_model_files
    useless = tmp_path / "useless.json"
    useless.write_text(json.dumps({"generic_reasoning": "no JSON here", "image_reasoning": "nor here"}))
    db_path = tmp_path / "runs.sqlite"
    proc = cli(
        "segment",
        ROOT / "examples" / "voc.jpg",
        "--classes",
        "cat, dog",
        "--lmm",
        f"scripted:{useless}",
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
        "--runs-db",
        db_path,
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 4, proc.stderr
    with RunsDB(db_path, read_only=True) as db:
        (record,) = db.list_runs()
    assert record.status == "failed" and record.error.startswith("no reasoning: ")
    assert " failed " in cli("runs", "--runs-db", db_path, "list").stdout


def test_reading_a_wal_database_leaves_no_files_beside_it(tmp_path):
    path = tmp_path / "runs.sqlite"
    with RunsDB(path) as db:
        db.start_run("r1", image="a.jpg")
        db.finish_run("r1", "done")
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()  # the last connection: SQLite removes -wal and -shm
    before = sorted(p.name for p in tmp_path.iterdir())
    assert before == ["runs.sqlite"], before
    for args in (["list"], ["show", "r1"]):
        proc = cli("runs", "--runs-db", path, *args)
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_heartbeat_advances_while_the_run_is_owned(tmp_path):
    db = RunsDB(tmp_path / "runs.sqlite")
    db.heartbeat_seconds = 0.05
    db.start_run("beating", image="a.jpg")
    first = db.get_run("beating").heartbeat
    deadline = time.monotonic() + 30
    while db.get_run("beating").heartbeat == first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.get_run("beating").heartbeat > first
    db.finish_run("beating", "done")
    ended = db.get_run("beating").heartbeat
    time.sleep(0.3)
    assert db.get_run("beating").heartbeat == ended  # a finished run is not kept alive
    db.close()


# ------------------------------------------------------------------ older databases

OLD_SCHEMA = """
CREATE TABLE openseg_runs (
    run_id TEXT PRIMARY KEY, created REAL NOT NULL, finished REAL, status TEXT NOT NULL, image TEXT,
    image_key TEXT, vocabulary TEXT, classes INTEGER, backend TEXT, settings TEXT, options TEXT,
    redact INTEGER NOT NULL DEFAULT 0, error TEXT, stopped_at TEXT, parent_run TEXT, replay_from TEXT
);
INSERT INTO openseg_runs (run_id, created, status, image) VALUES ('old-done', 1000, 'done', 'a.jpg');
INSERT INTO openseg_runs (run_id, created, status, image) VALUES ('old-running', 1000, 'running', 'b.jpg');
"""


def old_database(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.executescript(OLD_SCHEMA)
    connection.close()


def test_an_older_database_is_read_as_it_is_and_migrated_when_written(tmp_path):
    path = tmp_path / "runs.sqlite"
    old_database(path)
    with RunsDB(path, read_only=True) as reader:
        statuses = {r.run_id: r.status for r in reader.list_runs()}
    assert statuses == {"old-done": "done", "old-running": "interrupted"}  # no owner, no heartbeat for ages
    columns = {row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(openseg_runs)")}
    assert "owner_pid" not in columns  # reading migrated nothing
    writer = RunsDB(path)
    columns = {row[1] for row in writer.connection.execute("PRAGMA table_info(openseg_runs)")}
    assert {"resumed_at", "owner_pid", "owner_host", "owner_token", "heartbeat"} <= columns
    checkpoint(writer, "old-running")
    resumed = writer.resume_run("old-running")
    assert resumed.created == 1000 and resumed.status == "running" and resumed.owner_pid == os.getpid()
    RunsDB(path).close()  # migrating twice is harmless


# ------------------------------------------------------------------ reading creates nothing


@pytest.mark.parametrize(
    "action",
    [
        ["list"],
        ["show", "abcd"],
        ["diff", "abcd", "efgh"],
        ["report", "abcd", "-o", "REPORT"],
        ["resume", "abcd"],
        ["replay", "abcd", "--from", "segmentation"],
    ],
)
def test_runs_commands_on_a_missing_database_create_nothing(tmp_path, action):
    path = tmp_path / "nowhere" / "runs.sqlite"
    args = [str(tmp_path / "r.html") if a == "REPORT" else a for a in action]
    proc = cli("runs", "--runs-db", path, *args)
    assert not path.parent.exists() and not (tmp_path / "r.html").exists()
    assert "Traceback" not in proc.stderr
    if action == ["list"]:
        assert proc.returncode == 0 and proc.stdout.strip() == f"no runs recorded (no runs database at {path})"
    else:
        assert proc.returncode == 2 and proc.stderr.strip() == f"openseg-r: error: no runs database at {path}"


def test_reading_opens_read_only_and_writes_nothing(tmp_path):
    path = tmp_path / "runs.sqlite"
    with RunsDB(path) as db:
        db.start_run("r1", image="a.jpg")
        db.finish_run("r1", "done")
    before = path.read_bytes()
    listing = cli("runs", "--runs-db", path, "list")
    assert listing.returncode == 0 and "r1" in listing.stdout
    assert path.read_bytes() == before and not (tmp_path / "runs-artifacts").exists()
    with RunsDB(path, read_only=True) as reader:
        with pytest.raises(RunsDBError, match="could not be written: attempt to write a readonly database"):
            reader.start_run("r2", image="b.jpg")
    with pytest.raises(NoRunsDatabaseError, match="no runs database at"):
        RunsDB(tmp_path / "other.sqlite", read_only=True)
    with pytest.raises(NoRunsDatabaseError):
        RunsDB(tmp_path / "other.sqlite", create=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("runs.sqlite")) == []
