"""The folder job: many images segmented into one ``--out`` folder, resumable.

``--out`` holds one folder per image, ``run.json`` (what every image is segmented with:
vocabulary, settings, the model options that change results) and ``index.jsonl``, one
line per image as it finishes. ``--resume`` reads the index, keeps the folders earlier
runs gave their images, and refuses a run that would compute something else
(:func:`same_run_or_refuse`), so one index never mixes images segmented two ways. The
images run here (:func:`segment_folder`) or on a Ray cluster (:func:`segment_folder_on_ray`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from openseg_r.errors import ConfigError
from openseg_r.runs.inputs import output_names

INDEX_NAME = "index.jsonl"


class FolderPlan:
    """What a run on many images will do: every image, its folder, and which are done already."""

    def __init__(self, out: Path, images: list[str], folders: list[str], done: set[str]) -> None:
        self.out, self.images, self.folders, self.done = out, images, folders, done
        self.todo = [(image, folder) for image, folder in zip(images, folders) if image not in done]


def plan_folder(out: str | Path, inputs, settings, *, resume: bool, trace_jsonl: str | None = None) -> FolderPlan:
    """Check what a run on many images needs before any model loads, and plan it."""
    check = settings.self_check
    if check.enabled and check.mode == "human":
        raise ConfigError(
            "--self-check-mode human asks you about one image at a time: give one image file, "
            "or use the lmm self-check mode for many"
        )
    if trace_jsonl:
        raise ConfigError(
            "--trace-jsonl writes the step log of one image; for many, record them (--record or "
            "--runs-db: each image is a run, see `openseg-r runs show RUN`)"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    index = out / INDEX_NAME
    if index.exists() and not resume:
        raise ConfigError(f"{index} already exists: add --resume to continue that run, or choose another --out")
    for argument in inputs.unmatched:
        print(f"note: no image files in {argument}", file=sys.stderr)
    # Earlier lines, by image path (spelled either way: ./a.jpg is a.jpg, from the same folder)
    records = read_index(index) if resume and index.is_file() else {}
    wanted = {path_key(image): image for image in inputs.images}
    earlier = {
        wanted[key]: record["out"]
        for key, record in records.items()
        if key in wanted and folder_name_ok(record.get("out"))
    }
    taken = {INDEX_NAME, RUN_NAME} | {
        record["out"] for key, record in records.items() if key not in wanted and folder_name_ok(record.get("out"))
    }
    folders = output_names(inputs.images, inputs.base, reserved=earlier, taken=taken)
    done = {
        image
        for image, folder in zip(inputs.images, folders)
        if records.get(path_key(image), {}).get("ok") is True
        and earlier.get(image) == folder
        and (out / folder / "result.json").is_file()
    }
    return FolderPlan(out, inputs.images, folders, done)


RUN_NAME = "run.json"
# Where and how fast a run goes, not what it computes: free to change on --resume.
FREE_ON_RESUME = ("device", "reasoning_cache", "text_cache", "batch_size", "batch_wait_ms", "lmm_concurrency", "redact")


def run_record(vocabulary, settings, options, outputs: dict | None = None) -> dict:
    """What the images of one --out are segmented with, and which files each folder holds
    ("outputs": those of ``outputs`` asked for, recorded only then): all must match on --resume."""
    from openseg_r.config.settings import POLICY_ONLY_SETTINGS

    model = {k: v for k, v in options.recorded().items() if k not in FREE_ON_RESUME}
    speed_only = options.kind.speed_only
    model["segmenter_options"] = {k: v for k, v in model["segmenter_options"].items() if k not in speed_only}
    # How many calls at once changes no answer; no options at all reads as folders written before them.
    options_given = {k: v for k, v in (model.pop("lmm_options", None) or {}).items() if k != "concurrency"}
    if any(v is not None for v in options_given.values()):
        model["lmm_options"] = options_given
    classes = [{"name": c.name, "queries": list(c.queries)} for c in vocabulary.classes]
    record = {
        "vocabulary": classes,
        "settings": settings.model_dump(mode="json", exclude=set(POLICY_ONLY_SETTINGS)),
        "model": model,
    }
    asked = {name: value for name, value in (outputs or {}).items() if value}
    if asked:
        record["outputs"] = asked
    return record


def same_run_or_refuse(out: Path, record: dict, resume: bool) -> None:
    """Write --out/run.json, or on --resume check that this run computes what it recorded, so
    one index never mixes images segmented two ways."""
    path = out / RUN_NAME
    if resume and path.is_file():
        try:
            earlier = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot read {path} ({exc}); resume into another --out") from None
        from openseg_r.config.options import upgraded_record

        now = json.loads(json.dumps(record))
        if isinstance(earlier.get("model"), dict):  # folders written before segmenters had names
            earlier["model"] = upgraded_record(earlier["model"])
        changed = [key for key in dict.fromkeys([*record, "outputs"]) if earlier.get(key) != now.get(key)]
        if changed:
            raise ConfigError(
                f"{out} was segmented with other {' and '.join(changed)}; resume with the same "
                "options, or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")


def read_index(path: Path) -> dict[str, dict]:
    """The last well-formed line of index.jsonl for each image, by its absolute path (a cut or
    corrupt line is ignored)."""
    records: dict[str, dict] = {}
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("image"), str):
                records[path_key(record["image"])] = record
    return records


def path_key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def folder_name_ok(name) -> bool:
    """A folder name from index.jsonl is used only if it is one plain name inside --out."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", INDEX_NAME, RUN_NAME)
        and "/" not in name
        and "\\" not in name
        and Path(name).name == name
    )


class IndexFile:
    """index.jsonl, appended one flushed line per image; created with the first line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def write(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = self.path.is_file() and self.path.stat().st_size > 0 and _last_byte(self.path) != b"\n"
            # backslashreplace: a lone surrogate of an undecodable file name stays a valid JSON escape
            self._file = self.path.open("a", encoding="utf-8", errors="backslashreplace")
            if cut:  # a line a crash cut short must not swallow the next one
                self._file.write("\n")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


def segment_folder(
    model, plan: FolderPlan, vocabulary, concurrency: int, show_progress: bool, outputs: dict | None = None
) -> int:
    """Segment the plan's images, ``concurrency`` at once; write each image's folder and
    index line as it finishes. Returns how many images failed.

    Files are written by a few writer threads (PNG encoding takes about 0.1 s for a VOC
    photo, which would otherwise cap a fast GPU); at most 2 x writers results wait for one,
    and a full queue stops taking outcomes, so memory stays bounded."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import closing

    from tqdm import tqdm

    from openseg_r._support.render import format_share

    index = IndexFile(plan.out / INDEX_NAME)
    counts = {"ok": 0, "failed": 0}
    bugs: list[BaseException] = []
    lock = threading.Lock()
    writers = min(4, concurrency)
    room = threading.BoundedSemaphore(2 * writers)
    bar = tqdm(
        total=len(plan.todo),
        unit="image",
        desc="segment",
        file=sys.stderr,
        disable=not show_progress,
        dynamic_ncols=True,
    )

    def say(line: str, stream) -> None:
        encoding = getattr(stream, "encoding", None) or "utf-8"  # undecodable file names print escaped
        line = line.encode(encoding, "backslashreplace").decode(encoding, "replace")
        if show_progress:
            bar.write(line, file=stream)
        else:
            print(line, file=stream, flush=True)

    def finish(outcome) -> None:
        """Write one image's folder, then its index line and its line of output."""
        try:
            image, folder = plan.todo[outcome.index]
            error = None if outcome.ok else error_without_path(outcome.error or "unknown error", image)
            if outcome.ok:
                try:
                    outcome.result.save(plan.out / folder, **(outputs or {}))
                except OSError as exc:
                    error = f"could not write {plan.out / folder}: {exc.strerror or exc}"
                except Exception as exc:  # e.g. a file name result.json cannot hold: this image only
                    error = f"could not write {plan.out / folder}: {type(exc).__name__}: {exc}"
            result = outcome.result if error is None else None
            classes = (
                {c.name: round(c.area_fraction, 6) for c in sorted(result.classes, key=lambda c: -c.pixels) if c.pixels}
                if result is not None
                else {}
            )
            with lock:
                index.write(
                    {
                        "image": image,
                        "out": folder if result is not None else None,
                        "ok": result is not None,
                        "error": error,
                        "seconds": round(outcome.seconds, 3),
                        "classes": classes,
                        "run_id": result.run_id if result is not None else None,
                    }
                )
                bar.update(1)
                if result is None:
                    counts["failed"] += 1
                    say(f"openseg-r: skipped {image}: {error}", sys.stderr)
                else:
                    counts["ok"] += 1
                    found = ", ".join(f"{name} {format_share(share)}" for name, share in list(classes.items())[:3])
                    more = f" (+{len(classes) - 3} more)" if len(classes) > 3 else ""
                    say(f"{image} -> {plan.out / folder}: {found or 'no class'}{more}", sys.stdout)
        except BaseException as exc:  # a bug here: raised in the main thread once the others are written
            bugs.append(exc)
        finally:
            room.release()

    outcomes = model.iter_segment_many([image for image, _ in plan.todo], vocabulary, concurrency=concurrency)
    unavailable = None  # the LMM backend's failure, when it stopped the run
    try:
        with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="openseg-r-writer") as pool:
            with closing(outcomes):  # on an interrupt too: images not started are dropped
                for outcome in outcomes:
                    room.acquire()
                    pool.submit(finish, outcome)
                    if bugs:
                        break
                    if not outcome.ok and (unavailable := _backend_down(model)):
                        break  # every later image would fail the same way: stop asking
    finally:
        bar.close()
        index.close()
    if bugs:
        raise bugs[0]
    already = f", {len(plan.done)} already done" if plan.done else ""
    print(
        f"segmented {counts['ok']} of {len(plan.todo)} image(s) ({counts['failed']} failed{already}); "
        f"index: {plan.out / INDEX_NAME}"
    )
    if unavailable:
        from openseg_r.errors import ReasoningUnavailableError

        raise ReasoningUnavailableError(
            f"{unavailable}; stopped: --resume continues once it answers, "
            "--allow-fallback segments with bare class names",
            unavailable=True,
        )
    return counts["failed"]


def _backend_down(model) -> str | None:
    """Why the model's LMM backend cannot be used right now, if it cannot."""
    health = getattr(model.lmm, "health", None)
    return getattr(health, "down", None)


def error_without_path(error: str, image: str) -> str:
    """An image's error without its path (the line already names the image)."""
    for label in {image, str(Path(image))}:
        error = error.replace(f": {label}", "")
    return error
