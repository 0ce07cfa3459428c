"""The SQLite reasoning cache: real files, two processes, corruption, locks, hit rate."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

from openseg_r import OpenSegR
from openseg_r._support.cache import SQLiteReasoningCache
from openseg_r.lmm import ScriptedLMM

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "voc_reasoning.json"


def test_round_trip_and_keys(tmp_path):
    cache = SQLiteReasoningCache(tmp_path / "r.sqlite")
    key = {"model": "m|{}", "prompt_version": "v1", "subject": "cat"}
    assert cache.get("generic", key) is None
    cache.put("generic", key, {"name": "cat", "attributes": ["whiskers"]})
    again = SQLiteReasoningCache(tmp_path / "r.sqlite")
    assert again.get("generic", key) == {"name": "cat", "attributes": ["whiskers"]}
    assert again.get("generic", key | {"prompt_version": "v2"}) is None  # a new prompt is a miss
    assert again.get("image", key) is None
    assert again.models("generic") == ["m|{}"]


def _writer(path, worker):
    cache = SQLiteReasoningCache(path)
    for i in range(40):
        cache.put("generic", {"model": "m", "subject": f"{worker}-{i}"}, {"i": i})


def test_two_processes_write_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    SQLiteReasoningCache(path)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(path, w)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = SQLiteReasoningCache(path)
    assert len(cache.entries("generic")) == 80
    assert cache.events == []


def test_corrupt_file_is_moved_aside_and_rebuilt(tmp_path):
    path = tmp_path / "bad.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"this is a damaged database" * 100)  # a file that is not
    cache = SQLiteReasoningCache(path)  # SQLite is refused instead (tests/test_cache_paths.py)
    assert any("rebuilt" in event for event in cache.events)
    assert list(tmp_path.glob("bad.sqlite.corrupt-*"))
    cache.put("generic", {"subject": "x"}, {"ok": True})
    assert cache.get("generic", {"subject": "x"}) == {"ok": True}


def test_locked_database_is_a_miss_not_a_crash(tmp_path):
    path = tmp_path / "locked.sqlite"
    cache = SQLiteReasoningCache(path, timeout=0.2)
    cache.put("generic", {"subject": "x"}, {"ok": True})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")  # leave WAL so an exclusive lock blocks readers too
    holder.execute("BEGIN EXCLUSIVE")
    try:
        cache.put("generic", {"subject": "y"}, {"ok": True})
        assert any("write skipped" in e for e in cache.events)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert cache.get("generic", {"subject": "x"}) == {"ok": True}


def test_second_run_hits_the_cache_and_asks_nothing(tmp_path, tiny_segmenter, voc):
    script = json.loads(EXAMPLE.read_text())
    path = tmp_path / "reasoning.sqlite"
    first_lmm = ScriptedLMM(script)
    first = OpenSegR(segmenter=tiny_segmenter, lmm=first_lmm, reasoning_cache=path).segment(voc["rgb"], "voc21")
    assert first.reasoning_cache["hits"] == 0 and first.reasoning_cache["misses"] == 21
    second_lmm = ScriptedLMM(script)  # a new process would build a new backend: same model id
    second = OpenSegR(segmenter=tiny_segmenter, lmm=second_lmm, reasoning_cache=path).segment(voc["rgb"], "voc21")
    assert second.reasoning_cache == {"path": str(path), "hits": 21, "misses": 0, "events": []}
    assert second_lmm.requests == [] and second.state.lmm_calls == []
    assert second.state.prompts == first.state.prompts
    assert second.to_json()["reasoning_cache"]["hits"] == 21
