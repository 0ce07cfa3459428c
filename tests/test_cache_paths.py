"""What the SQLite stores may do to the path they are given: the reasoning cache (--cache),
the text-embedding cache (--text-cache) and the runs database (--runs-db) only ever move
aside a corrupt *SQLite* file. A folder, a text file, another file type, a device or
another program's database is refused with one line and left exactly as it was."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openseg_r._support.cache import MemoryReasoningCache, open_cache, open_reasoning_cache
from openseg_r._support.sqlite_files import SQLITE_HEADER, NotAnSQLiteFileError, move_aside
from openseg_r.errors import ConfigError
from openseg_r.runs import RunsDB, RunsDBError
from openseg_r.segmenters.text_cache import open_text_cache

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
OPENERS = {
    "reasoning cache": open_cache,
    "text cache": open_text_cache,
    "runs database": lambda path: RunsDB(path),
}


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: kind, bytes and mtime, to prove nothing changed."""
    seen = {}
    for path in sorted([folder, *folder.rglob("*")]):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        seen[str(path.relative_to(folder))] = (info.st_mode, info.st_mtime_ns, content)
    return seen


def make_bad_path(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A path of ``kind`` that no store may use, and the words its refusal must contain."""
    if kind == "folder":
        path = tmp_path / "cache.sqlite"
        path.mkdir()
        (path / "notes.txt").write_text("my notes")
        return path, "is a folder, not an SQLite file"
    if kind == "text file":
        path = tmp_path / "cache.sqlite"
        path.write_text("a plain text file the user cares about\n")
        return path, "is not an SQLite database; refusing to use or replace it"
    if kind == "random bytes":
        path = tmp_path / "cache.sqlite"
        path.write_bytes(np.random.default_rng(0).bytes(5000))
        return path, "is not an SQLite database"
    if kind == "short file":  # shorter than the 16-byte header
        path = tmp_path / "cache.sqlite"
        path.write_bytes(b"SQLite")
        return path, "is not an SQLite database"
    if kind == "other program's database":
        path = tmp_path / "cache.sqlite"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE moz_places (url TEXT)")
            db.execute("INSERT INTO moz_places VALUES ('https://example.org')")
        db.close()
        return path, "is an SQLite database of another program (tables: moz_places); refusing to change it"
    if kind == "broken symlink":
        path = tmp_path / "cache.sqlite"
        path.symlink_to(tmp_path / "gone.sqlite")
        return path, "is a broken symbolic link"
    raise AssertionError(kind)


BAD_KINDS = ["folder", "text file", "random bytes", "short file", "other program's database", "broken symlink"]


@pytest.mark.parametrize("store", list(OPENERS))
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_a_path_that_is_not_an_sqlite_file_is_refused_and_never_touched(tmp_path, store, kind):
    path, words = make_bad_path(tmp_path, kind)
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="refus|folder") as caught:
        OPENERS[store](path)
    assert isinstance(caught.value, NotAnSQLiteFileError)
    message = str(caught.value)
    assert words in message and str(path) in message and "\n" not in message
    assert snapshot(tmp_path) == before  # same entries, bytes and mtimes: no .corrupt-*, no -wal
    assert not list(tmp_path.glob("*.corrupt-*"))


@pytest.mark.parametrize("store", list(OPENERS))
def test_a_device_is_refused(store):
    with pytest.raises(NotAnSQLiteFileError, match="/dev/null is not a regular file"):
        OPENERS[store](Path("/dev/null"))
    assert Path("/dev/null").is_char_device()


def test_a_reasoning_cache_path_is_checked_even_without_an_lmm(tmp_path):
    path, _ = make_bad_path(tmp_path, "folder")
    with pytest.raises(NotAnSQLiteFileError, match="is a folder"):
        open_reasoning_cache(str(path), has_lmm=False)
    fresh = tmp_path / "new" / "r.sqlite"
    assert isinstance(open_reasoning_cache(str(fresh), has_lmm=False), MemoryReasoningCache)
    assert not fresh.parent.exists()  # checking created nothing


def corrupt_sqlite(path: Path) -> bytes:
    """An SQLite header followed by garbage: a damaged database, which may be moved aside."""
    data = SQLITE_HEADER + np.random.default_rng(1).bytes(8000)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("store", ["reasoning cache", "text cache"])
def test_a_corrupt_sqlite_file_is_still_moved_aside_and_rebuilt(tmp_path, store):
    path = tmp_path / "cache.sqlite"
    data = corrupt_sqlite(path)
    cache = OPENERS[store](path)
    aside = list(tmp_path.glob("cache.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == data
    assert any(f"moved to {aside[0].name} and rebuilt" in event for event in cache.events)
    assert path.read_bytes()[:16] == SQLITE_HEADER  # a new, working database in its place


def test_a_corrupt_runs_database_is_refused_not_moved(tmp_path):
    path = tmp_path / "runs.sqlite"
    data = corrupt_sqlite(path)
    with pytest.raises(RunsDBError, match="is corrupt"):
        RunsDB(path)
    assert path.read_bytes() == data and sorted(p.name for p in tmp_path.iterdir()) == ["runs.sqlite"]


@pytest.mark.parametrize("store", list(OPENERS))
def test_an_empty_file_is_a_new_database(tmp_path, store):
    path = tmp_path / "cache.sqlite"
    path.touch()
    OPENERS[store](path)
    assert path.read_bytes()[:16] == SQLITE_HEADER and not list(tmp_path.glob("*.corrupt-*"))


def test_moving_aside_twice_in_one_second_keeps_both(tmp_path):
    path = tmp_path / "cache.sqlite"
    first = corrupt_sqlite(path)
    Path(f"{path}-wal").write_bytes(b"last writes")
    one = move_aside(path, "the cache")
    second = SQLITE_HEADER + b"another damaged one"
    path.write_bytes(second)
    two = move_aside(path, "the cache")
    assert one != two and one.read_bytes() == first and two.read_bytes() == second
    assert Path(f"{one}-wal").read_bytes() == b"last writes"  # the journal went with its database
    assert not path.exists()
    path.write_text("not a database")
    with pytest.raises(NotAnSQLiteFileError):
        move_aside(path, "the cache")
    assert path.read_text() == "not a database"


def test_a_text_cache_replaced_during_a_run_is_switched_off_not_moved(tmp_path):
    path = tmp_path / "text.sqlite"
    store = open_text_cache(path)
    store.put_many("m", "t", {"cat": np.ones(4, np.float32)})
    for journal in tmp_path.glob("text.sqlite-*"):
        journal.unlink()
    path.write_text("someone else's notes")  # replaced behind the store's back
    assert store.get_many("m", "t", ["cat"]) == {}  # a miss; the run goes on
    assert path.read_text() == "someone else's notes" and not list(tmp_path.glob("*.corrupt-*"))
    assert any("refusing to use or replace it" in e and "kept in memory only" in e for e in store.events)
    store.put_many("m", "t", {"dog": np.ones(4, np.float32)})  # switched off: nothing written
    assert path.read_text() == "someone else's notes"


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300
    )


@pytest.mark.parametrize("flag", ["--cache", "--text-cache"])
def test_segment_cli_refuses_a_folder_in_one_line_and_leaves_it(tmp_path, tiny_model_files, flag):
    config, weights = tiny_model_files
    data = tmp_path / "data"
    data.mkdir()
    folder, _ = make_bad_path(data, "folder")
    before = snapshot(data)
    proc = cli(
        "segment",
        ROOT / "examples" / "voc.jpg",
        "--classes",
        "person, chair",
        "--lmm",
        f"scripted:{SCRIPT}",
        flag,
        folder,
        "--clip-model",
        config,
        "--clip-pretrained",
        weights,
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"{folder} is a folder, not an SQLite file" in proc.stderr
    assert snapshot(data) == before


def test_reason_cli_refuses_a_text_file(tmp_path):
    path, _ = make_bad_path(tmp_path, "text file")
    before = snapshot(tmp_path)
    proc = cli("reason", "generic", "--classes", "cat", "--lmm", f"scripted:{SCRIPT}", "--cache", path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "is not an SQLite database; refusing to use or replace it" in proc.stderr
    assert snapshot(tmp_path) == before
