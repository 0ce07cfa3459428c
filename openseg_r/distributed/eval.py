"""``openseg-r eval --engine ray``: the local runner's evaluation, its images spread over a
Ray actor pool.

The driver does what must happen once: it checks the folder (run.json, resuming from
images.jsonl), computes the generic reasoning and ships it to the actors, then iterates
the results and writes each image's line as it arrives (flushed, an id already written
skipped: a batch Ray retries after an actor died adds nothing twice). An image that fails
goes to failed.jsonl with its error and the rest go on; the totals are added on the
driver from the same per-image lines the local runners write (integer area counts; PQ
counts summed in image-name order), so they equal the local runner's exactly. Semantic
benchmarks and coco-panoptic share all of it: only the per-image function and the
report differ."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from openseg_r.config.options import DEFAULT_IMAGES_PER_TASK, ModelOptions
from openseg_r.distributed.actors import EvalActor
from openseg_r.distributed.cluster import (
    DEFAULT_CPUS_PER_ACTOR,
    actor_threads,
    checked_cpus_per_actor,
    connect,
    require_ray,
)
from openseg_r.errors import ConfigError
from openseg_r.evals.datasets import DatasetSpec, select
from openseg_r.evals.metrics import AreaCounts
from openseg_r.evals.panoptic import (
    PANOPTIC_DATASET,
    PanopticDataset,
    open_panoptic_state,
    panoptic_config,
    write_panoptic_reports,
)
from openseg_r.evals.runner import (
    IMAGES_FILE,
    EvalState,
    add_record,
    eval_settings,
    eval_vocabulary,
    open_state,
    run_config,
    torch_numerics,
    write_reports,
)
from openseg_r.panoptic.build import DEFAULT_MIN_AREA

FAILED_FILE = "failed.jsonl"


def run_eval_on_ray(
    options: ModelOptions,
    dataset: DatasetSpec,
    root: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    ablation: bool = False,
    vocabulary=None,
    protocol: dict | None = None,
    settings=None,
    address: str | None = None,
    actors: int = 2,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR,
    images_per_task: int = DEFAULT_IMAGES_PER_TASK,
    lmm_concurrency: int | None = None,
    progress: bool = False,
    reasoning_cache=None,
) -> EvalState:
    """Evaluate ``dataset`` on a Ray cluster (``address``: see :func:`connect`) with ``actors``
    actors of ``gpus_per_actor`` GPUs and ``cpus_per_actor`` CPUs each (torch runs as many
    threads as whole CPUs, at least 1), ``images_per_task`` images per batch (evaluated at
    once in an actor) and ``lmm_concurrency`` LMM calls in flight per actor. Writes the
    same folder as :func:`openseg_r.evals.runner.run_eval`, plus failed.jsonl. Image
    reasoning is merged into ``reasoning_cache`` (default: the options' cache)."""
    pool = _Pool(actors, gpus_per_actor, cpus_per_actor, images_per_task, lmm_concurrency, address)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = eval_vocabulary(dataset, root, vocabulary)
    samples = select(dataset.samples(root, split), limit, seed, None)
    model = pool.driver_model(options, settings, reasoning_cache)
    setting_list = eval_settings(model, ablation)
    config = run_config(
        model,
        dataset,
        root,
        split,
        setting_list,
        vocabulary,
        limit=limit,
        seed=seed,
        shard=None,
        protocol=protocol,
        throughput=pool.throughput(),
    )
    config["model"] = dict(config["model"], device=options.device or "auto (per actor)", dtype=options.precision)
    state = open_state(out, config, vocabulary.names)

    def add(record: dict) -> None:
        counts = {
            setting: AreaCounts.from_sparse(entry["counts"], len(state.class_names))
            for setting, entry in record["settings"].items()
        }
        add_record(state, record, counts)

    todo = [s for s in samples if s.id not in state.done]
    pool.evaluate(
        model,
        options,
        vocabulary,
        setting_list,
        {"dataset": dataset.name},
        todo,
        state,
        add,
        out,
        len(samples),
        progress,
    )
    write_reports(state, out)
    pool.report_failures(state, out)
    return state


def run_panoptic_eval_on_ray(
    options: ModelOptions,
    dataset: PanopticDataset,
    out: str | Path,
    *,
    min_area: int = DEFAULT_MIN_AREA,
    limit: int | None = None,
    seed: int = 0,
    ablation: bool = False,
    vocabulary=None,
    settings=None,
    address: str | None = None,
    actors: int = 2,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR,
    images_per_task: int = DEFAULT_IMAGES_PER_TASK,
    lmm_concurrency: int | None = None,
    progress: bool = False,
    reasoning_cache=None,
) -> dict:
    """:func:`openseg_r.evals.panoptic.run_panoptic_eval` on a Ray cluster (the options as
    for :func:`run_eval_on_ray`): the same folder and totals, plus failed.jsonl."""
    pool = _Pool(actors, gpus_per_actor, cpus_per_actor, images_per_task, lmm_concurrency, address)
    vocabulary = dataset.vocabulary(vocabulary)
    samples = dataset.samples(limit, seed, None)
    model = pool.driver_model(options, settings, reasoning_cache)
    setting_list = eval_settings(model, ablation)
    config = panoptic_config(
        model,
        dataset,
        vocabulary,
        setting_list,
        min_area=min_area,
        limit=limit,
        seed=seed,
        shard=None,
        throughput=pool.throughput(),
    )
    config["segmenter"] = dict(config["segmenter"], device=options.device or "auto (per actor)")
    out = Path(out)
    state = open_panoptic_state(out, config)
    task = {
        "dataset": PANOPTIC_DATASET,
        "root": str(dataset.root.resolve()),
        "annotations": str(dataset.path.resolve()),
        "min_area": min_area,
    }
    todo = [s for s in samples if s.id not in state.records]
    pool.evaluate(model, options, vocabulary, setting_list, task, todo, state, state.add, out, len(samples), progress)
    summary = write_panoptic_reports(state, out)
    pool.report_failures(state, out)
    return summary


class _Pool:
    """What both evaluations share: the actor pool's settings, the driver's model, and the
    run itself (generic reasoning once, the ledger, the actors, the rows written back)."""

    def __init__(self, actors, gpus_per_actor, cpus_per_actor, images_per_task, lmm_concurrency, address) -> None:
        _check_counts(actors, gpus_per_actor, images_per_task)
        checked_cpus_per_actor(cpus_per_actor)
        self.ray = require_ray()
        self.actors, self.gpus_per_actor, self.cpus_per_actor = actors, gpus_per_actor, cpus_per_actor
        self.images_per_task, self.lmm_concurrency, self.address = images_per_task, lmm_concurrency, address

    def driver_model(self, options: ModelOptions, settings, reasoning_cache):
        """The driver's model describes the run and reasons; its CLIP stays on the CPU
        (actors segment). Image reasoning is merged into ``reasoning_cache``, if given."""
        from openseg_r.model import OpenSegR

        model = OpenSegR.from_options(options.with_overrides(device="cpu"), settings=settings)
        if reasoning_cache is not None:
            from openseg_r._support.cache import open_reasoning_cache

            model.reasoning_cache = open_reasoning_cache(reasoning_cache, has_lmm=True)
        return model

    def throughput(self) -> dict:
        return {
            "engine": "ray",
            "actors": self.actors,
            "gpus_per_actor": self.gpus_per_actor,
            "cpus_per_actor": self.cpus_per_actor,
            **torch_numerics(),
            "torch_threads": actor_threads(self.cpus_per_actor),
            "images_per_task": self.images_per_task,
            "lmm_concurrency": self.lmm_concurrency,
        }

    def evaluate(self, model, options, vocabulary, setting_list, task, todo, state, add, out, total, progress) -> None:
        """Evaluate ``todo`` on the actors, each good row ``add``-ed and written as it comes."""
        from openseg_r.nodes.generic_reasoning import cached_generic_entries, reason_generic_ahead

        if not todo:
            return
        generic = []
        if any(overrides.get("reasoning") for _, overrides in setting_list):
            context = model.context()
            _reason_generic(model, vocabulary, context, reason_generic_ahead)
            generic = cached_generic_entries(vocabulary, context)
        connect(self.address)
        from openseg_r.distributed.ledger import start_ledger

        ray = self.ray
        ledger = start_ledger(ray)  # images that crash their worker get a budget, not endless retries
        (out / FAILED_FILE).unlink(missing_ok=True)  # the images that failed last time are tried again
        rows = [{"id": s.id, "image": str(s.image), "label": str(s.label)} for s in todo]
        blocks = max(1, -(-len(rows) // self.images_per_task))  # one block per batch: every actor gets work
        results = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            EvalActor,
            fn_constructor_kwargs={
                "options": options.model_dump(mode="json"),
                "settings": model.settings.model_dump(mode="json"),
                "vocabulary": vocabulary.model_dump(mode="json"),
                "task": task,
                "setting_overrides": [list(pair) for pair in setting_list],
                "generic": generic,
                "lmm_concurrency": self.lmm_concurrency,
                "threads": actor_threads(self.cpus_per_actor),
                "ledger": ledger,
            },
            # Ray Data restarts a dead actor and runs its batch again (max_restarts and
            # max_task_retries are -1 for actor pools): the ids already written are skipped.
            batch_size=self.images_per_task,
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_gpus=self.gpus_per_actor or None,
            num_cpus=self.cpus_per_actor,
        )
        try:
            _collect(results, state, add, out, model.reasoning_cache, total, progress, task["dataset"])
        finally:
            ray.kill(ledger)  # one job's ledger; a driver that runs several jobs keeps none

    @staticmethod
    def report_failures(state, out: Path) -> None:
        if state.failed:
            print(
                f"{len(state.failed)} image(s) failed (see {out / FAILED_FILE}); the others are evaluated",
                file=sys.stderr,
            )


def _check_counts(actors: int, gpus_per_actor: float, images_per_task: int) -> None:
    if not isinstance(actors, int) or actors < 1:
        raise ConfigError(f"--actors must be a positive number of actors, got {actors!r}")
    if gpus_per_actor < 0:
        raise ConfigError(f"--gpus-per-actor must be 0 or more, got {gpus_per_actor!r}")
    if not isinstance(images_per_task, int) or images_per_task < 1:
        raise ConfigError(f"the batch size must be a positive number of images, got {images_per_task!r}")


def _reason_generic(model, vocabulary, context, reason_generic_ahead) -> None:
    """Generic reasoning once, here; unless fallbacks are allowed, an unusable LMM stops the
    run before any actor starts."""
    from openseg_r.errors import ReasoningUnavailableError

    try:
        reason_generic_ahead(vocabulary, context)
    except ReasoningUnavailableError:
        if not model.settings.allow_fallback:
            raise


def _collect(results, state, add, out: Path, cache, total: int, progress: bool, name: str) -> None:
    """Write each row as it comes back, on this thread only: a good one to images.jsonl (an id
    already there is skipped) and to ``add``, a failed one to failed.jsonl; image reasoning
    into ``cache``."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=len(state.done), desc=f"eval {name} (ray)", unit="img")
    started = time.perf_counter()
    failed_file = out / FAILED_FILE
    with (out / IMAGES_FILE).open("a", encoding="utf-8") as log:
        for number, row in enumerate(results.iter_rows(), start=1):
            for entry in json.loads(row["image_reasoning"] or "[]"):
                cache.put(entry["kind"], entry["key"], entry["value"])
            image_id = str(row["id"])
            if image_id in state.done:
                continue  # a retried batch's image, already written
            if row["error"]:
                if image_id not in state.failed:
                    state.failed[image_id] = row["error"]
                    with failed_file.open("a", encoding="utf-8") as failures:
                        failures.write(json.dumps({"id": image_id, "error": row["error"]}) + "\n")
                continue
            state.failed.pop(image_id, None)  # failed on an attempt Ray then retried
            log.write(row["record"] + "\n")
            log.flush()
            add(json.loads(row["record"]))
            if bar is not None:
                bar.set_postfix({"img/s": f"{number / (time.perf_counter() - started):.2f}"})
                bar.update(1)
    if bar is not None:
        bar.close()
