"""The persistent text-embedding cache: a real SQLite file shared by fresh loads of the
same weights, keyed by a hash of the text tower, and robust to damage, locks and threads."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from openseg_r.errors import ConfigError
from openseg_r.segmenters.dense_clip import text as text_module
from openseg_r.segmenters.dense_clip.loading import load_clip
from openseg_r.segmenters.dense_clip.text import TextEmbedder, template_key, templates_for
from openseg_r.segmenters.text_cache import SQLiteTextCache, default_text_cache_path, open_text_cache

PHRASES = ["cat", "sofa that has cushions", "lamp", "cat"]
TEMPLATES = len(templates_for("vild"))


def fresh_clip(tiny_model_files, weights=None):
    """A new LoadedCLIP, as a second process would load it."""
    config, default_weights = tiny_model_files
    return load_clip(str(config), None if weights is False else str(weights or default_weights), device="cpu")


def other_weights(folder, seed):
    """Different weights under the same file name and model name."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    path = folder / "tiny-clip.pt"
    torch.save(open_clip.create_model("tiny-clip", pretrained=None).state_dict(), path)
    return path


def rows(path, table="text_embeddings"):
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_a_second_load_encodes_nothing_and_gets_the_same_vectors(tiny_model_files, tmp_path):
    path = tmp_path / "text.sqlite"
    reference = TextEmbedder(fresh_clip(tiny_model_files)).embed(PHRASES, "vild")  # no store at all
    first = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    cold = first.embed(PHRASES, "vild")
    assert first.encoded_sentences == 3 * TEMPLATES and rows(path) == 3
    second = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    warm = second.embed(PHRASES, "vild")
    assert second.encoded_sentences == 0
    assert warm.dtype == torch.float32 and warm.device == torch.device("cpu")
    assert torch.equal(warm, cold) and torch.equal(warm, reference)  # bit for bit
    assert second.store.stats() == {"path": str(path), "hits": 3, "misses": 0, "events": []}
    assert second.identity == first.identity and second.identity.startswith("sha256:")
    # the other template set is another key: encoded once, then stored too
    second.embed(["cat"], "imagenet")
    assert second.encoded_sentences == len(templates_for("imagenet")) and rows(path) == 4


def test_only_the_missing_phrases_are_encoded(tiny_model_files, tmp_path):
    path = tmp_path / "text.sqlite"
    TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path)).embed(["cat", "lamp"], "vild")
    embedder = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    embedder.embed(["lamp", "dog", "cat", "tree"], "vild")
    assert embedder.encoded_sentences == 2 * TEMPLATES
    assert embedder.store.stats()["hits"] == 2 and embedder.store.stats()["misses"] == 2
    embedder.embed(["dog", "cat"], "vild")  # memory now: the store is not asked again
    assert embedder.encoded_sentences == 2 * TEMPLATES and embedder.store.stats()["hits"] == 2


def test_other_weights_of_the_same_name_or_random_weights_never_share(tiny_model_files, tmp_path):
    path = tmp_path / "text.sqlite"
    base = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    base.embed(PHRASES, "vild")
    other = TextEmbedder(
        fresh_clip(tiny_model_files, other_weights(tmp_path / "other", seed=1)), store=open_text_cache(path)
    )
    other.embed(PHRASES, "vild")
    assert other.identity != base.identity and other.encoded_sentences == 3 * TEMPLATES
    randoms = [TextEmbedder(fresh_clip(tiny_model_files, weights=False), store=open_text_cache(path)) for _ in range(2)]
    for embedder in randoms:
        embedder.embed(PHRASES, "vild")
        assert embedder.encoded_sentences == 3 * TEMPLATES
    assert len({base.identity, other.identity, randoms[0].identity, randoms[1].identity}) == 4
    assert rows(path) == 4 * 3
    assert rows(path, "weights_identity") == 2  # the two files are remembered, random weights never


def test_the_identity_is_the_content_and_is_remembered_per_file_state(tiny_model_files, tmp_path, monkeypatch):
    path = tmp_path / "text.sqlite"
    hashed = []
    real_hash = text_module.hash_text_tower
    monkeypatch.setattr(text_module, "hash_text_tower", lambda *a: hashed.append(1) or real_hash(*a))
    first = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    first.embed(["cat"], "vild")
    again = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    again.embed(["cat"], "vild")
    assert len(hashed) == 1 and again.identity == first.identity  # remembered: not hashed again
    copy = tmp_path / "copy" / "renamed.pt"
    copy.parent.mkdir()
    copy.write_bytes(tiny_model_files[1].read_bytes())
    copied = TextEmbedder(fresh_clip(tiny_model_files, copy), store=open_text_cache(path))
    copied.embed(["cat"], "vild")
    assert len(hashed) == 2 and copied.identity == first.identity and copied.encoded_sentences == 0
    # the same path rewritten with other weights: new size or mtime, so hashed again
    replaced = other_weights(tmp_path / "copy2", seed=2)
    os.replace(replaced, copy)
    changed = TextEmbedder(fresh_clip(tiny_model_files, copy), store=open_text_cache(path))
    changed.embed(["cat"], "vild")
    assert len(hashed) == 3 and changed.identity != first.identity and changed.encoded_sentences == TEMPLATES


def test_no_store_means_no_hashing(tiny_model_files, monkeypatch):
    monkeypatch.setattr(text_module, "hash_text_tower", lambda *a: pytest.fail("hashed without a store"))
    embedder = TextEmbedder(fresh_clip(tiny_model_files))
    assert embedder.embed(["cat"], "vild").shape == (1, 32)


def test_a_garbage_file_is_moved_aside_and_the_run_goes_on(tiny_model_files, tmp_path):
    path = tmp_path / "text.sqlite"
    garbage = b"SQLite format 3\x00" + os.urandom(5000)  # damaged SQLite; other files are refused
    path.write_bytes(garbage)
    store = open_text_cache(path)
    assert len(store.events) == 1 and "moved to text.sqlite.corrupt-" in store.events[0]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("text.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == garbage
    embedder = TextEmbedder(fresh_clip(tiny_model_files), store=store)
    assert embedder.embed(PHRASES, "vild").shape == (4, 32) and rows(path) == 3


def test_damaged_pages_are_found_and_the_file_rebuilt(tiny_model_files, tmp_path):
    path = tmp_path / "text.sqlite"
    store = SQLiteTextCache(path)
    store.put_many("m", "t", {f"phrase {i}": np.ones(512, np.float32) for i in range(200)})
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "r+b") as handle:  # keep the header page, scramble the rest
        handle.seek(32768)
        handle.write(os.urandom(path.stat().st_size - 32768))
    damaged = SQLiteTextCache(path)
    damaged.get_many("m", "t", ["phrase 1"])  # found at open or at the first read
    assert any("moved to text.sqlite.corrupt-" in event for event in damaged.events)
    embedder = TextEmbedder(fresh_clip(tiny_model_files), store=damaged)
    embedder.embed(["cat"], "vild")
    assert embedder.encoded_sentences == TEMPLATES and rows(path) == 1


@pytest.mark.parametrize("bad", ["short", "nan", "lying_dim"])
def test_a_stored_vector_of_the_wrong_size_or_not_finite_is_a_miss(tiny_model_files, tmp_path, bad):
    path = tmp_path / "text.sqlite"
    probe = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    expected = probe.embed(["cat"], "vild")
    key = template_key("vild", templates_for("vild"))
    vector = {"short": np.ones(16), "nan": np.full(32, np.nan), "lying_dim": np.ones(16)}[bad]
    blob = np.asarray(vector, np.float32).tobytes()
    with sqlite3.connect(path) as db:  # put_many would refuse NaN, so write the row directly
        db.execute(
            "UPDATE text_embeddings SET dim = ?, vector = ? WHERE phrase = 'cat'",
            (32 if bad == "lying_dim" else len(vector), blob),
        )
    embedder = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    assert torch.equal(embedder.embed(["cat"], "vild"), expected)
    assert embedder.encoded_sentences == TEMPLATES
    assert embedder.store.stats()["misses"] == 1 and "1 stored vector(s)" in embedder.store.events[0]
    assert embedder.store.get_many(embedder.identity, key, ["cat"], dim=32)["cat"].shape == (32,)  # rewritten


def test_two_threads_share_one_store(tiny_model_files, tmp_path):
    path = tmp_path / "text.sqlite"
    store = open_text_cache(path)
    phrases = [[f"thing {i}" for i in range(start, start + 12)] for start in (0, 6)]  # 6 in common
    reference = TextEmbedder(fresh_clip(tiny_model_files))
    embedders = [TextEmbedder(fresh_clip(tiny_model_files), store=store) for _ in phrases]
    barrier, results, errors = threading.Barrier(2), [None, None], []

    def work(index):
        try:
            barrier.wait()
            for _ in range(3):
                results[index] = embedders[index].embed(phrases[index], "vild")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and store.events == []
    for index in range(2):  # allclose: which thread encoded a phrase decides its batch, hence its last bits
        assert torch.allclose(results[index], reference.embed(phrases[index], "vild"), atol=1e-6)
    assert rows(path) == 18
    late = TextEmbedder(fresh_clip(tiny_model_files), store=open_text_cache(path))
    late.embed(phrases[0] + phrases[1], "vild")
    assert late.encoded_sentences == 0


def test_a_locked_file_skips_writes_and_misses_reads(tiny_model_files, tmp_path):
    path = tmp_path / "text.sqlite"
    store = SQLiteTextCache(path, timeout=0.2)
    store.put_many("m", "t", {"a": np.ones(4, np.float32)})
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
        store.put_many("m", "t", {"b": np.ones(4, np.float32)})
        assert store.events == ["write of 1 vector(s) skipped: database is locked"]
        assert list(store.get_many("m", "t", ["a", "b"])) == ["a"]  # WAL: readers still read
        other.execute("ROLLBACK")
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        other.execute("COMMIT")  # in exclusive locking mode the lock is kept after the commit
        assert store.get_many("m", "t", ["a"]) == {}
        assert store.events[-1] == "read skipped: database is locked"
        embedder = TextEmbedder(fresh_clip(tiny_model_files), store=store)
        assert embedder.embed(["cat"], "vild").shape == (1, 32)  # the run goes on
        assert embedder.encoded_sentences == TEMPLATES
    finally:
        other.close()
    assert list(store.get_many("m", "t", ["a"])) == ["a"]


def test_get_many_and_put_many_cross_the_sql_chunk_size(tmp_path):
    store = SQLiteTextCache(tmp_path / "text.sqlite")
    rng = np.random.default_rng(0)
    vectors = {f"phrase {i}": rng.standard_normal(512).astype(np.float32) for i in range(1234)}
    store.put_many("m", "t", vectors)
    got = store.get_many("m", "t", [*vectors, "absent"], dim=512)
    assert len(got) == 1234 and all(np.array_equal(got[p], v) for p, v in vectors.items())
    assert store.get_many("other model", "t", ["phrase 1"]) == {}
    assert store.stats()["hits"] == 1234 and store.stats()["misses"] == 2 and store.count() == 1234


def test_open_text_cache_choices(tmp_path):
    for choice in (None, "none", "memory", "NONE", ""):
        assert open_text_cache(choice) is None
    user = open_text_cache("user")
    expected = Path(os.environ["XDG_CACHE_HOME"]) / "openseg-r" / "text_embeddings.sqlite"
    assert user.path == default_text_cache_path() == expected and user.path.is_file()
    given = open_text_cache(tmp_path / "deep" / "t.sqlite")
    assert given.path == tmp_path / "deep" / "t.sqlite" and given.path.is_file()
    assert open_text_cache(given) is given
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create the text-embedding cache folder"):
        open_text_cache(blocker / "t.sqlite")
    with pytest.raises(ConfigError, match="is a folder"):
        open_text_cache(tmp_path)


def test_the_segmenter_uses_the_store(tiny_model_files, tmp_path):
    from openseg_r.segmenters.dense_clip import CLIPSegmenter

    config, weights = tiny_model_files
    path = tmp_path / "text.sqlite"
    first = CLIPSegmenter.from_pretrained(str(config), str(weights), device="cpu", text_cache=str(path))
    names = first.embed_names(["cat", "dog"])
    second = CLIPSegmenter.from_pretrained(str(config), str(weights), device="cpu", text_cache=str(path))
    assert torch.equal(second.embed_names(["cat", "dog"]), names) and second.text.encoded_sentences == 0
    user = CLIPSegmenter.from_pretrained(str(config), str(weights), device="cpu", text_cache="user")
    assert user.text.store.path == default_text_cache_path()


def test_random_weights_keep_their_embeddings_in_memory(tiny_model_files, tmp_path):
    """Random weights are new in every process: their vectors would never be read again."""
    from openseg_r.segmenters.dense_clip import CLIPSegmenter

    config, _ = tiny_model_files
    path = tmp_path / "text.sqlite"
    random = CLIPSegmenter.from_pretrained(str(config), None, device="cpu", text_cache=str(path))
    random.embed_names(["cat"])
    assert random.text.store is None and not path.exists()


def test_the_memory_cache_is_an_lru_that_can_be_smaller_than_a_call(tiny_model_files):
    embedder = TextEmbedder(fresh_clip(tiny_model_files), max_cached=2)
    assert embedder.embed(["a", "b", "c"], "vild").shape == (3, 32)  # more phrases than the cache holds
    embedder.embed(["a"], "vild")
    embedder.embed(["b"], "vild")
    embedder.embed(["a"], "vild")  # a is now the most recent
    before = embedder.encoded_sentences
    embedder.embed(["c"], "vild")  # evicts b, not a
    embedder.embed(["a"], "vild")
    assert embedder.encoded_sentences == before + TEMPLATES


def test_the_file_is_bounded_and_the_least_recently_used_go_first(tmp_path):
    """The documented policy: at most max_bytes of vectors; past it the least recently used
    go, down to 90%; a read marks a vector used (at most once a day); free pages are given back."""
    from openseg_r.segmenters import text_cache as embedding_cache

    path = tmp_path / "text.sqlite"
    vector_bytes = 512 * 4
    store = SQLiteTextCache(path, max_bytes=40 * vector_bytes)
    old = {f"old {i}": np.full(512, i, np.float32) for i in range(30)}
    store.put_many("m", "t", old)
    day_ago = time.time() - embedding_cache.REFRESH_AFTER_S - 60
    with sqlite3.connect(path) as db:  # written a day ago; "old 0".."old 4" are read today, below
        db.execute("UPDATE text_embeddings SET created = ? - rowid", (day_ago,))
    db.close()
    assert set(store.get_many("m", "t", [f"old {i}" for i in range(5)])) == {f"old {i}" for i in range(5)}
    store.put_many("m", "t", {f"new {i}": np.full(512, -i, np.float32) for i in range(31)})  # 61 > 40: trim to 36
    kept = set(store.get_many("m", "t", [*old, *(f"new {i}" for i in range(31))]))
    assert store.count() * vector_bytes <= 40 * vector_bytes * embedding_cache.TRIM_TO
    assert {f"new {i}" for i in range(31)} <= kept  # just written
    assert {f"old {i}" for i in range(5)} <= kept  # read since: recently used
    assert not kept & {f"old {i}" for i in range(5, 30)}  # the least recently used went first
    assert any("least recently used" in event for event in store.events)
    sizes = []
    for round_ in range(12):  # 12 x 36 vectors written: 864 KB, 21 times the bound
        store.put_many("m", "t", {f"round {round_} {i}": np.full(512, i + 0.5, np.float32) for i in range(36)})
        assert store.count() * vector_bytes <= 40 * vector_bytes
        sizes.append(path.stat().st_size)
    assert max(sizes[4:]) <= max(sizes[:4])  # the file stopped growing: free pages reused or given back
