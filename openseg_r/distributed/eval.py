"""``openseg-r eval --engine ray``: the local runner's evaluation, its images spread over a
Ray actor pool.

The driver does what must happen once: it checks the folder (run.json, resuming from
images.jsonl), computes the generic reasoning and ships it to the actors, then iterates
the results and writes each image's line as it arrives (flushed, an id already written
skipped: a batch Ray retries after an actor died adds nothing twice). An image that fails
goes to failed.jsonl with its error and the rest go on; the totals are integers added on
the driver, so they equal the local runner's exactly."""

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
    from openseg_r.model import OpenSegR
    from openseg_r.nodes.generic_reasoning import cached_generic_entries, reason_generic_ahead

    _check_counts(actors, gpus_per_actor, images_per_task)
    checked_cpus_per_actor(cpus_per_actor)
    ray = require_ray()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = eval_vocabulary(dataset, root, vocabulary)
    samples = select(dataset.samples(root, split), limit, seed, None)
    # The driver's model describes the run and reasons; its CLIP stays on the CPU (actors segment).
    model = OpenSegR.from_options(options.with_overrides(device="cpu"), settings=settings)
    if reasoning_cache is not None:
        from openseg_r._support.cache import open_reasoning_cache

        model.reasoning_cache = open_reasoning_cache(reasoning_cache, has_lmm=True)
    setting_list = eval_settings(model, ablation)
    throughput = {
        "engine": "ray",
        "actors": actors,
        "gpus_per_actor": gpus_per_actor,
        "cpus_per_actor": cpus_per_actor,
        **torch_numerics(),
        "torch_threads": actor_threads(cpus_per_actor),
        "images_per_task": images_per_task,
        "lmm_concurrency": lmm_concurrency,
    }
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
        throughput=throughput,
    )
    config["model"] = dict(config["model"], device=options.device or "auto (per actor)", dtype=options.precision)
    state = open_state(out, config, vocabulary.names)
    todo = [s for s in samples if s.id not in state.done]
    if todo:
        generic = []
        if any(overrides.get("reasoning") for _, overrides in setting_list):
            context = model.context()
            _reason_generic(model, vocabulary, context, reason_generic_ahead)
            generic = cached_generic_entries(vocabulary, context)
        connect(address)
        from openseg_r.distributed.ledger import start_ledger

        ledger = start_ledger(ray)  # images that crash their worker get a budget, not endless retries
        (out / FAILED_FILE).unlink(missing_ok=True)  # the images that failed last time are tried again
        rows = [{"id": s.id, "image": str(s.image), "label": str(s.label)} for s in todo]
        blocks = max(1, -(-len(rows) // images_per_task))  # one block per batch: every actor gets work
        results = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            EvalActor,
            fn_constructor_kwargs={
                "options": options.model_dump(mode="json"),
                "settings": model.settings.model_dump(mode="json"),
                "vocabulary": vocabulary.model_dump(mode="json"),
                "dataset": dataset.name,
                "setting_overrides": [list(pair) for pair in setting_list],
                "generic": generic,
                "lmm_concurrency": lmm_concurrency,
                "threads": actor_threads(cpus_per_actor),
                "ledger": ledger,
            },
            # Ray Data restarts a dead actor and runs its batch again (max_restarts and
            # max_task_retries are -1 for actor pools): the ids already written are skipped.
            batch_size=images_per_task,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=gpus_per_actor or None,
            num_cpus=cpus_per_actor,
        )
        try:
            _collect(results, state, out, model.reasoning_cache, len(samples), progress, dataset.name)
        finally:
            ray.kill(ledger)  # one job's ledger; a driver that runs several jobs keeps none
    write_reports(state, out)
    if state.failed:
        print(
            f"{len(state.failed)} image(s) failed (see {out / FAILED_FILE}); the others are evaluated", file=sys.stderr
        )
    return state


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


def _collect(results, state: EvalState, out: Path, cache, total: int, progress: bool, name: str) -> None:
    """Write each row as it comes back, on this thread only: a good one to images.jsonl (an id
    already there is skipped), a failed one to failed.jsonl; image reasoning into ``cache``."""
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
            record = json.loads(row["record"])
            log.write(row["record"] + "\n")
            log.flush()
            counts = {
                setting: AreaCounts.from_sparse(entry["counts"], len(state.class_names))
                for setting, entry in record["settings"].items()
            }
            add_record(state, record, counts)
            if bar is not None:
                bar.set_postfix({"img/s": f"{number / (time.perf_counter() - started):.2f}"})
                bar.update(1)
    if bar is not None:
        bar.close()
