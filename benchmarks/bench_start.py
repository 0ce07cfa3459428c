"""(c) Cold and warm start: seconds from process start to the first label map for
``openseg-r segment`` with VOC-21 and reasoning, without and with the persistent
text-embedding cache.

Each run is a fresh ``openseg-r segment`` process on the VOC photo (examples/voc.jpg),
``--vocab voc21`` and the scripted reasoning of examples/voc_reasoning.json (168 text
queries x 14 templates), with the full ViT-B/16 architecture and random weights. The
random weights are saved once to a local file, so both runs of a pair load the same
weights and so hash to the same model identity (two random initialisations never share
cached vectors). The reasoning cache is off (``--cache none``; scripted answers are
instant), so the difference is the text cache alone. Per repeat, three processes:

- ``none``: ``--text-cache none`` (memory only, as before the cache existed);
- ``cold``: the default text cache, the user cache file, under a fresh, empty
  ``XDG_CACHE_HOME`` (encodes everything and writes it);
- ``warm``: the same again, now with the file the cold run wrote.

A small wrapper in the child process (``--child``) times ``TextEmbedder.embed`` (the
text side: memory, store, encoding, and the weights hash on first use) and notes when
``CLIPSegmenter.segment``/``segment_batch`` first returns, then runs the CLI unchanged.

    python benchmarks/bench_start.py [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
MODES = ("none", "cold", "warm")


def child(report: str, argv: list[str]) -> int:
    """Run the CLI with timing hooks; write what they saw to ``report`` (JSON)."""
    from openseg_r.cli.main import main as cli_main
    from openseg_r.segmenters.dense_clip import text
    from openseg_r.segmenters.dense_clip.segmenter import CLIPSegmenter

    seen = {"text_s": 0.0, "identity_s": 0.0, "encoded_sentences": 0, "first_labels": None, "store": None}
    embed, identity = text.TextEmbedder.embed, text.text_tower_identity

    def timed_embed(self, phrases, template_set):
        before, started = self.encoded_sentences, time.perf_counter()
        try:
            return embed(self, phrases, template_set)
        finally:
            seen["text_s"] += time.perf_counter() - started
            seen["encoded_sentences"] += self.encoded_sentences - before
            seen["store"] = self.store.stats() if self.store is not None else None

    def timed_identity(*args, **kwargs):
        started = time.perf_counter()
        try:
            return identity(*args, **kwargs)
        finally:
            seen["identity_s"] += time.perf_counter() - started

    def first_labels(method):
        def wrapper(*args, **kwargs):
            result = method(*args, **kwargs)
            seen["first_labels"] = seen["first_labels"] or time.time()
            return result

        return wrapper

    text.TextEmbedder.embed, text.text_tower_identity = timed_embed, timed_identity
    if os.environ.get("BENCH_START_NO_TEXT_CACHE"):
        import openseg_r.segmenters.text_cache

        openseg_r.segmenters.text_cache.open_text_cache = lambda choice: None
    for name in ("segment", "segment_batch"):
        if hasattr(CLIPSegmenter, name):
            setattr(CLIPSegmenter, name, first_labels(getattr(CLIPSegmenter, name)))
    try:
        return cli_main(argv)
    finally:
        seen["end"] = time.time()
        Path(report).write_text(json.dumps(seen))


def segment_has_text_cache_flag() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", "segment", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    return "--text-cache" in help_text


def run_once(mode: str, folder: Path, weights: Path, xdg_cache: Path, device: str | None, flag: bool) -> dict:
    """One ``openseg-r segment`` process. Cold and warm use the default text cache, the
    user cache file, here under a private ``XDG_CACHE_HOME`` (fresh for each cold run)."""
    out, report = folder / f"out-{mode}", folder / f"report-{mode}.json"
    argv = [
        "segment",
        str(PHOTO),
        "--vocab",
        "voc21",
        "--lmm",
        f"scripted:{SCRIPT}",
        "--cache",
        "none",
        "--clip-model",
        "ViT-B-16",
        "--clip-pretrained",
        str(weights),
        "--out",
        str(out),
    ]
    if device:
        argv += ["--device", device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "XDG_CACHE_HOME": str(xdg_cache)}
    if mode == "none":
        if flag:
            argv += ["--text-cache", "none"]
        else:  # a CLI without the flag: the child turns the store off itself
            env["BENCH_START_NO_TEXT_CACHE"] = "1"
    started = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(report), "--", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    seen = json.loads(report.read_text())
    return {
        "first_labels_s": seen["first_labels"] - started,
        "exit_s": seen["end"] - started,
        "text_s": seen["text_s"],
        "identity_s": seen["identity_s"],
        "encoded_sentences": seen["encoded_sentences"],
        "store": seen["store"],
    }


def save_random_weights(path: Path) -> None:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    torch.save(model.state_dict(), path)  # what `--clip-pretrained FILE` loads


def ade847_size(folder: Path) -> str:
    """What the text cache holds for ADE-847 with synonyms and reasoning: every synonym
    with each of 3 attribute slots, plus the bare names (the no-reasoning baseline and
    the class aligner), as 512-d vectors in a real store file."""
    import numpy as np

    from openseg_r.prompts.templates import templates_for
    from openseg_r.schemas import compose_phrase
    from openseg_r.segmenters.dense_clip.text import template_key
    from openseg_r.segmenters.text_cache import SQLiteTextCache
    from openseg_r.vocab import resolve_vocabulary

    vocabulary = resolve_vocabulary("ade847-syn")
    queries = [q for c in vocabulary.classes for q in c.queries]
    attributes = ["smooth flat surface", "four sturdy legs", "metal frame"]  # 3 slots, a typical answer's length
    reasoned = [
        compose_phrase(q, f"{a} of {c.name}") for c in vocabulary.classes for q in c.queries for a in attributes
    ]
    phrases = list(dict.fromkeys(reasoned + queries))
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(phrases), 512)).astype(np.float32)
    path = folder / "ade847.sqlite"
    store = SQLiteTextCache(path)
    store.put_many("sha256:" + "0" * 64, template_key("vild", templates_for("vild")), dict(zip(phrases, vectors)))
    started = time.perf_counter()
    store.get_many("sha256:" + "0" * 64, template_key("vild", templates_for("vild")), reasoned, dim=512)
    read_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.glob("ade847.sqlite*"))
    return (
        f"ADE-847 with synonyms: {len(vocabulary.classes)} classes, {len(queries)} synonyms; query bank with "
        f"reasoning {len(reasoned)} phrases; distinct entries with the bare names {len(phrases)}; "
        f"file {size / 1e6:.1f} MB ({size / len(phrases):.0f} B/entry, 2048 B of it the vector); "
        f"reading the {len(reasoned)} back: {1000 * read_s:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu, cuda (default: the CLI's own choice)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="openseg-r-bench-start-") as tmp:
        folder = Path(tmp)
        size_line = ade847_size(folder)
        weights = folder / "vit-b-16-random.pt"
        save_random_weights(weights)
        flag = segment_has_text_cache_flag()
        for repeat in range(args.repeats):
            xdg_cache = folder / f"xdg-cache-{repeat}"  # fresh and empty for each cold run
            for mode in MODES:
                runs[mode].append(run_once(mode, folder, weights, xdg_cache, args.device, flag))
                print(f"repeat {repeat + 1} {mode}: {runs[mode][-1]['first_labels_s']:.2f} s", file=sys.stderr)
            cache_bytes = sum(p.stat().st_size for p in (xdg_cache / "openseg-r").glob("text_embeddings.sqlite*"))
    warm_store = runs["warm"][-1]["store"]
    print(
        f"openseg-r segment examples/voc.jpg --vocab voc21 --lmm scripted:examples/voc_reasoning.json "
        f"--cache none --clip-model ViT-B-16 --clip-pretrained FILE (168 queries x 14 templates; random weights "
        f"saved to FILE; text cache: the user cache file; device={args.device or 'auto'}; repeats={args.repeats})"
    )
    if not flag:
        print("note: `segment` has no --text-cache flag here; the 'none' row turns the store off inside the process")
    print()
    print(
        "| text cache | to first label map (s) | to exit (s) | text side (s) | weights hash (s) | sentences encoded |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    med = {
        mode: {
            k: statistics.median(r[k] for r in runs[mode])
            for k in ("first_labels_s", "exit_s", "text_s", "identity_s", "encoded_sentences")
        }
        for mode in MODES
    }
    labels = {"none": "none (memory only)", "cold": "cold (empty file)", "warm": "warm (same file)"}
    for mode in MODES:
        m = med[mode]
        print(
            f"| {labels[mode]} | {m['first_labels_s']:.2f} | {m['exit_s']:.2f} | {m['text_s']:.3f} | "
            f"{m['identity_s']:.3f} | {m['encoded_sentences']:.0f} |"
        )
    print()
    ratio = med["warm"]["text_s"] / med["cold"]["text_s"]
    saved = med["cold"]["first_labels_s"] - med["warm"]["first_labels_s"]
    print(
        f"warm text side / cold text side: {100 * ratio:.2f}% (goal <= 5%); "
        f"warm start is {saved:.2f} s faster to the first label map "
        f"({med['cold']['first_labels_s'] / med['warm']['first_labels_s']:.2f}x)"
    )
    if warm_store is None:
        raise SystemExit("the warm run had no text store: is --text-cache passed through to the segmenter?")
    print(
        f"warm store: {warm_store['hits']} hits, {warm_store['misses']} misses, events {warm_store['events']}; "
        f"cache file after one cold run: {cache_bytes / 1e6:.2f} MB"
    )
    print(size_line)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:]))
    main()
