"""``openseg-r eval``: evaluate settings over a dataset in one pass, resumably, in shards.

Per image, every setting of the run is evaluated (the image is loaded once, and the
segmenter encodes it once: its window features are reused across settings), and one
JSON line with each setting's per-class counts is appended to ``images.jsonl``. A
re-run reads that file back and skips the images already done; a line cut short by a
crash is dropped and that image is done again. Shards write the same files, and
``merge`` adds their counts exactly.

With ``concurrency`` > 1, worker threads evaluate that many images at once (their LMM
calls overlap, and the model may batch their forward passes); images finish out of
order, and only the calling thread writes ``images.jsonl`` and adds the totals, one
whole line per finished image, so the file stays resumable and the totals (integers)
are those of one image at a time (docs/design.md §6.2).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from openseg_r._support.files import write_atomically
from openseg_r._support.images import load_image
from openseg_r.errors import ConfigError
from openseg_r.evals.datasets import DatasetError, DatasetSpec, Sample, select
from openseg_r.evals.metrics import AreaCounts, image_counts, summarize
from openseg_r.nodes.stages import ReasoningSlots
from openseg_r.panoptic.quality import PQTotals
from openseg_r.segmenters.registry import get_kind

ABLATION: list[tuple[str, dict]] = [
    ("bare names", {"reasoning": False}),
    ("generic reasoning", {"reasoning": True, "use_image_reasoning": False, "class_filter": "none"}),
    ("generic + image reasoning", {"reasoning": True, "class_filter": "none"}),
    ("+ class filter", {"reasoning": True, "class_filter": "hard"}),
    ("+ self-check", {"reasoning": True, "class_filter": "hard", "self_check": {"enabled": True}}),
]
RUN_FILE, IMAGES_FILE = "run.json", "images.jsonl"


@dataclass
class SettingTotals:
    """One setting's counts over the images done (area counts, or panoptic quality's
    per-category counts) and what the images cost."""

    counts: AreaCounts | PQTotals
    images: int = 0
    seconds: float = 0.0
    lmm_calls: int = 0
    tokens: int = 0


@dataclass
class EvalState:
    config: dict
    class_names: list[str]
    totals: dict[str, SettingTotals]
    done: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error, for engines that go on past one


def settings_for(ablation: bool, reasoning: bool) -> list[tuple[str, dict]]:
    if ablation:
        return ABLATION
    return [("default", {"reasoning": reasoning})]


def run_eval(
    model,
    dataset: DatasetSpec,
    root: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    ablation: bool = False,
    limit: int | None = None,
    seed: int = 0,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    vocabulary=None,
    protocol: dict | None = None,
    concurrency: int = 1,
) -> EvalState:
    """``vocabulary`` replaces the dataset's class names (same classes in label order, e.g.
    with synonyms); ``protocol`` describes the protocol applied to ``model``, for the reports.
    ``concurrency`` images are evaluated at once, on worker threads sharing ``model``."""
    slots = ReasoningSlots(concurrency)  # a bad value fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = eval_vocabulary(dataset, root, vocabulary)
    samples = select(dataset.samples(root, split), limit, seed, shard)
    settings = eval_settings(model, ablation)
    config = run_config(
        model,
        dataset,
        root,
        split,
        settings,
        vocabulary,
        limit=limit,
        seed=seed,
        shard=shard,
        protocol=protocol,
        throughput=local_throughput(model, concurrency),
    )
    state = open_state(out, config, vocabulary.names)
    todo = [s for s in samples if s.id not in state.done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"eval {dataset.name}", unit="img")

    def evaluate(sample: Sample) -> tuple[dict, dict[str, AreaCounts]]:
        with slots.slot() as on_event:  # given back when its reasoning is done
            return evaluate_image(model, dataset, vocabulary, sample, settings, on_event)

    started = time.perf_counter()
    pipeline = ImagePipeline(evaluate, todo, slots.workers)
    with (out / IMAGES_FILE).open("a", encoding="utf-8") as log, pipeline as finished:
        for number, (record, counts) in enumerate(finished, start=1):
            log.write(json.dumps(record) + "\n")  # one whole line per image, in the order they finish
            log.flush()
            add_record(state, record, counts)
            if bar is not None:
                last = settings[-1][0]
                miou = summarize(state.totals[last].counts)["mIoU"]
                bar.set_postfix(
                    {
                        "img/s": f"{number / (time.perf_counter() - started):.2f}",
                        "mIoU": "-" if miou is None else f"{miou:.1f}",
                    }
                )
                bar.update(1)
    if bar is not None:
        bar.close()
    write_reports(state, out)
    return state


def eval_vocabulary(dataset: DatasetSpec, root: str | Path, vocabulary=None):
    """The dataset's own vocabulary, or ``vocabulary`` checked to have one class per label."""
    own = dataset.load_vocabulary(root)
    if vocabulary is not None and len(vocabulary.classes) != len(own.classes):
        raise ConfigError(
            f"the vocabulary has {len(vocabulary.classes)} classes but {dataset.name} has "
            f"{len(own.classes)}: give one class per label, in label order"
        )
    return vocabulary or own


def eval_settings(model, ablation: bool) -> list[tuple[str, dict]]:
    """The settings evaluated per image: the ablation's (which needs an LMM) or the default one."""
    from openseg_r.lmm.base import NoLMM

    has_lmm = not isinstance(model.lmm, NoLMM)
    if ablation and not has_lmm:
        raise ConfigError(
            "--ablation compares reasoning settings: give an LMM (--lmm), a replay file, or a scripted one"
        )
    return settings_for(ablation, has_lmm)


def run_config(
    model,
    dataset: DatasetSpec,
    root: str | Path,
    split: str | None,
    settings,
    vocabulary,
    *,
    limit: int | None,
    seed: int,
    shard: tuple[int, int] | None,
    protocol: dict | None,
    throughput: dict,
) -> dict:
    """What run.json records: what a resumed run must match, and (``throughput``) how it ran."""
    return {
        "dataset": dataset.name,
        "split": split or dataset.default_split,
        "root": str(Path(root).resolve()),
        "settings": [name for name, _ in settings],
        "limit": limit,
        "seed": seed,
        "shard": list(shard) if shard else None,
        "classes": len(vocabulary.classes),
        "vocabulary": vocabulary.name,
        "class_names": vocabulary.names,
        "model": model.describe_segmenter(),
        "lmm": model.lmm.model_id,
        "protocol": protocol,
        # allow_fallback changes no number: an evaluation may resume with or without it
        "base_settings": model.settings.model_dump(mode="json", exclude={"allow_fallback"}),
        "setting_overrides": {name: overrides for name, overrides in settings},
        "throughput": throughput,
    }


def add_record(state: EvalState, record: dict, counts: dict[str, AreaCounts]) -> None:
    """Add one image's line (as :func:`evaluate_image` makes it) to the totals."""
    for name, entry in record["settings"].items():
        _add(state.totals[name], counts[name], entry["seconds"], entry["lmm_calls"], entry["tokens"])
    state.done.add(record["id"])


def local_throughput(model, concurrency: int) -> dict:
    """How fast the run was set up to go: recorded for information, never compared on resume
    (the counts do not depend on the threads: docs/design.md §2.5)."""
    options = getattr(model, "options", None)
    return {
        "concurrency": concurrency,
        "batch_size": getattr(options, "batch_size", None),
        "lmm_concurrency": getattr(options, "lmm_concurrency", None),
        **torch_numerics(),
    }


def torch_numerics() -> dict:
    """The torch build and its intra-op threads in this process."""
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def evaluate_image(
    model, dataset, vocabulary, sample: Sample, settings, on_event=None
) -> tuple[dict, dict[str, AreaCounts]]:
    """One image's line and its counts per setting. It runs on a worker thread (or a Ray
    actor), so it touches no shared state: the caller's thread adds the counts."""
    rgb = load_image(sample.image)
    label = dataset.load_label(sample.label)
    if label.shape != rgb.shape[:2]:
        raise ConfigError(f"{sample.id}: label {label.shape[::-1]} and image {rgb.shape[1::-1]} differ in size")
    record: dict = {"id": sample.id, "settings": {}}
    counts_by_setting: dict[str, AreaCounts] = {}
    for name, overrides in settings:
        started = time.perf_counter()
        result = model.segment(rgb, vocabulary, on_event=on_event, **overrides)
        seconds = time.perf_counter() - started
        try:
            counts = image_counts(result.labels, label, len(vocabulary.classes), dataset.ignore_index)
        except ValueError as exc:  # a label value outside the vocabulary: the dataset or --dataset is wrong
            raise DatasetError(f"{sample.id} ({sample.label}): {exc}") from None
        calls = result.state.lmm_calls
        tokens = sum(c.usage.prompt_tokens + c.usage.completion_tokens for c in calls)
        record["settings"][name] = {
            "counts": counts.to_sparse(),
            "seconds": round(seconds, 4),
            "lmm_calls": len(calls),
            "tokens": tokens,
        }
        counts_by_setting[name] = counts
    return record, counts_by_setting


class ImagePipeline:
    """Images evaluated ahead by ``workers`` threads; iterating yields each image's result
    as it finishes, on the caller's thread.

    Workers take the next image when they are free, so at most ``workers`` images are
    decoded and in flight. The first failure (an exception, KeyboardInterrupt included)
    stops them taking more: the results already finished are yielded, then it is raised.
    In-flight images are abandoned: the threads are daemons, so an interrupted process
    exits without waiting for them. With one worker, images run on the caller's thread."""

    POLL_S = 0.2  # how often the caller's thread wakes to notice Ctrl-C while it waits

    def __init__(self, evaluate, samples: list[Sample], workers: int) -> None:
        self._evaluate = evaluate
        self._samples = samples
        self._pending = iter(samples)
        self._workers = max(1, min(workers, len(samples)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._results: queue.Queue = queue.Queue()

    def __enter__(self) -> "ImagePipeline":
        if self._workers > 1:
            for number in range(self._workers):
                threading.Thread(target=self._work, name=f"openseg-r-eval-{number}", daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()  # on an error in the caller too: workers take no further image

    def __iter__(self):
        if self._workers == 1:
            for sample in self._samples:
                yield self._evaluate(sample)
            return
        running = self._workers
        while running:
            try:
                kind, value = self._results.get(timeout=self.POLL_S)
            except queue.Empty:
                continue
            if kind == "exited":
                running -= 1
            elif kind == "failed":
                self._stop.set()
                yield from self._finished_so_far()
                raise value
            else:
                yield value

    def _finished_so_far(self):
        while True:
            try:
                kind, value = self._results.get_nowait()
            except queue.Empty:
                return
            if kind == "done":
                yield value

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    sample = next(self._pending, None)
                if sample is None:
                    return
                try:
                    result = self._evaluate(sample)
                except BaseException as exc:  # noqa: BLE001 (handed to the caller's thread, which raises it)
                    self._stop.set()
                    self._results.put(("failed", exc))
                    return
                self._results.put(("done", result))
        finally:
            self._results.put(("exited", None))


def _add(totals: SettingTotals, counts: AreaCounts, seconds: float, calls: int, tokens: int) -> None:
    totals.counts = totals.counts + counts
    totals.images += 1
    totals.seconds += seconds
    totals.lmm_calls += calls
    totals.tokens += tokens


def comparable_segmenter(model: dict | None) -> dict | None:
    """What the segmenter computes with; where and how fast it ran (device, dtype, window
    batches, torch.compile) may change on resume."""
    if model is None:
        return None
    model = {"kind": "dense-clip"} | model  # runs written before segmenters had names were dense CLIP
    if "weights" not in model and "clip_model" in model:
        model["weights"] = f"{model['clip_model']}|{model.get('clip_pretrained')}"
    try:
        speed_only = get_kind(model["kind"]).speed_only
    except Exception:  # a kind not installed here: every option counts
        speed_only = ()
    ignored = ("device", "dtype", *speed_only)
    return {k: v for k, v in model.items() if k not in ignored}


def open_state(out: Path, config: dict, class_names: list[str]) -> EvalState:
    run_file = out / RUN_FILE
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        keys = ("dataset", "split", "settings", "limit", "seed", "shard", "classes")
        # Recorded since protocols: checked when the folder has them, so older folders still resume.
        later = ("vocabulary", "class_names", "protocol", "base_settings", "setting_overrides", "segmenter")
        current = json.loads(json.dumps(config))  # as it would be read back
        changed = [k for k in keys if previous.get(k) != current.get(k)]
        if "protocol" in previous:
            previous["segmenter"] = comparable_segmenter(previous.get("model"))
            current["segmenter"] = comparable_segmenter(current.get("model"))
            changed += [k for k in later if previous.get(k) != current.get(k)]
        if changed:
            raise ConfigError(
                f"{out} holds an evaluation with other settings ({', '.join(changed)}); "
                "use another --out folder, or the same options to resume"
            )
        if previous.get("throughput") != current["throughput"]:  # information only: the latest run's
            text = json.dumps(dict(previous, throughput=current["throughput"]), indent=2)
            write_atomically(run_file, lambda handle: handle.write(text.encode()))
    else:
        run_file.write_text(json.dumps(config, indent=2))
    state = EvalState(
        config, class_names, {name: SettingTotals(AreaCounts.zeros(len(class_names))) for name in config["settings"]}
    )
    load_records(out / IMAGES_FILE, state)
    return state


def load_records(path: Path, state: EvalState) -> None:
    """Add the per-image lines of a (possibly interrupted) run; a cut-short last line is dropped."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    good = []
    for line in lines:
        try:
            record = json.loads(line)
            entries = record["settings"]
            if set(entries) != set(state.totals) or record["id"] in state.done:
                continue
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # the line a crash cut short
        for name, entry in entries.items():
            _add(
                state.totals[name],
                AreaCounts.from_sparse(entry["counts"], len(state.class_names)),
                entry["seconds"],
                entry["lmm_calls"],
                entry["tokens"],
            )
        state.done.add(record["id"])
        good.append(line)
    if len(good) != len(lines):
        path.write_text("".join(line + "\n" for line in good), encoding="utf-8")


def merge(folders: list[str | Path], out: str | Path) -> EvalState:
    """Add the shards' per-image counts exactly (an image in two shards counts once)."""
    if not folders:
        raise ConfigError("give the shard folders to merge")
    configs = []
    for folder in folders:
        path = Path(folder) / RUN_FILE
        if not path.exists():
            raise ConfigError(f"{folder} is not an evaluation folder ({RUN_FILE} is missing)")
        configs.append(json.loads(path.read_text()))
    keys = ("dataset", "split", "settings", "limit", "seed", "classes")
    for other in configs[1:]:
        changed = [k for k in keys if other.get(k) != configs[0].get(k)]
        if changed:
            raise ConfigError(f"the shards differ in {', '.join(changed)}; only shards of one evaluation merge")
    from openseg_r.evals.datasets import get_dataset

    names = (
        configs[0].get("class_names") or get_dataset(configs[0]["dataset"]).load_vocabulary(configs[0]["root"]).names
    )
    config = dict(configs[0], shard=None, merged_from=[str(f) for f in folders])
    state = EvalState(config, names, {n: SettingTotals(AreaCounts.zeros(len(names))) for n in config["settings"]})
    for folder in folders:
        load_records(Path(folder) / IMAGES_FILE, state)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps(config, indent=2))
    write_reports(state, out)
    return state


def write_reports(state: EvalState, out: Path) -> dict:
    """summary.json and summary.md: mIoU and deltas per setting, the largest per-class
    changes, LMM calls and tokens per image, and seconds per image."""
    names = list(state.totals)
    results = {name: summarize(t.counts, state.class_names) for name, t in state.totals.items()}
    base = results[names[0]]["mIoU"]
    table = []
    for name in names:
        totals, metrics = state.totals[name], results[name]
        images = max(1, totals.images)
        table.append(
            {
                "setting": name,
                "mIoU": metrics["mIoU"],
                "delta": _delta(metrics["mIoU"], base),
                "fwIoU": metrics["fwIoU"],
                "aAcc": metrics["aAcc"],
                "mAcc": metrics["mAcc"],
                "images": totals.images,
                "lmm_calls_per_image": round(totals.lmm_calls / images, 2),
                "tokens_per_image": round(totals.tokens / images, 1),
                "seconds_per_image": round(totals.seconds / images, 3),
            }
        )
    changes = _largest_changes(results[names[0]], results[names[-1]]) if len(names) > 1 else []
    summary = {
        "config": state.config,
        "images": len(state.done),
        "table": table,
        "per_class": results,
        "largest_class_changes": changes,
    }
    if state.failed:  # images left out of every number (see failed.jsonl)
        summary["failed"] = len(state.failed)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary, names))
    return summary


def _delta(value, base):
    return None if value is None or base is None else round(value - base, 4)


def _largest_changes(first: dict, last: dict, count: int = 10) -> list[dict]:
    rows = []
    for name, before in first["per_class"].items():
        after = last["per_class"][name]
        if before["IoU"] is None and after["IoU"] is None:
            continue
        delta = (after["IoU"] or 0.0) - (before["IoU"] or 0.0)
        rows.append({"class": name, "before": before["IoU"], "after": after["IoU"], "delta": round(delta, 4)})
    return sorted(rows, key=lambda r: -abs(r["delta"]))[:count]


def _fmt(value, sign=False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _segmenter_line(model: dict) -> str:
    """The segmenter in a few words: its kind, and for dense CLIP the model and last block."""
    kind = model.get("kind", "dense-clip")
    if "clip_model" in model:
        return f"{kind} (CLIP {model.get('clip_model')}, {model.get('attention')})"
    return str(kind)


def _markdown(summary: dict, names: list[str]) -> str:
    config = summary["config"]
    lines = [
        f"# openseg-r evaluation: {config['dataset']} ({config['split']})",
        "",
        f"{summary['images']} image(s); LMM {config['lmm']}; segmenter {_segmenter_line(config['model'])}; "
        f"vocabulary {config.get('vocabulary')}",
        "",
        *_protocol_lines(config),
        "",
        "| setting | mIoU | Δ mIoU | fwIoU | aAcc | mAcc | LMM calls / image | tokens / image | s / image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in summary["table"]:
        lines.append(
            f"| {row['setting']} | {_fmt(row['mIoU'])} | {_fmt(row['delta'], True)} | {_fmt(row['fwIoU'])} | "
            f"{_fmt(row['aAcc'])} | {_fmt(row['mAcc'])} | {row['lmm_calls_per_image']} | "
            f"{row['tokens_per_image']} | {row['seconds_per_image']} |"
        )
    if summary["largest_class_changes"]:
        lines += [
            "",
            f"Largest per-class IoU changes, {names[0]} → {names[-1]}:",
            "",
            "| class | IoU before | IoU after | Δ |",
            "| --- | ---: | ---: | ---: |",
        ]
        for row in summary["largest_class_changes"]:
            lines.append(
                f"| {row['class']} | {_fmt(row['before'])} | {_fmt(row['after'])} | {_fmt(row['delta'], True)} |"
            )
    if summary.get("failed"):
        lines += ["", f"{summary['failed']} image(s) failed and are left out of every number: see failed.jsonl."]
    lines += ["", "LMM calls count only calls made: reasoning shared between settings (cached) is counted once."]
    return "\n".join(lines) + "\n"


def _protocol_lines(config: dict) -> list[str]:
    """The protocol, and every segmenter and scoring setting the evaluation used."""
    protocol = config.get("protocol")
    lines = [
        f"Protocol: {protocol['name']} ({protocol['source']})"
        if protocol
        else "Protocol: none (the model's own settings)",
        "",
    ]
    segmenter = {k: v for k, v in config["model"].items()}
    lines.append("Segmenter: " + ", ".join(f"{k}={v}" for k, v in segmenter.items()))
    base = config.get("base_settings") or {}
    scoring = {k: v for k, v in base.items() if k != "self_check"}
    lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in scoring.items()))
    for name, overrides in (config.get("setting_overrides") or {}).items():
        lines.append(f"Setting {name!r}: " + (json.dumps(overrides) if overrides else "as above"))
    return lines


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects i/n, like 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return index, count


__all__ = [
    "ABLATION",
    "add_record",
    "eval_settings",
    "eval_vocabulary",
    "evaluate_image",
    "load_records",
    "merge",
    "open_state",
    "parse_shard",
    "run_config",
    "run_eval",
    "write_reports",
]
