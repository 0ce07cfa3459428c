"""``segment --engine ray`` on many images: the folder job (:mod:`openseg_r.runs.folder`)
with the images segmented by Ray actors; this process writes the folders and the index."""

from __future__ import annotations

import json
import sys

from openseg_r._support.files import write_atomically
from openseg_r.distributed.segment import segment_files_on_ray
from openseg_r.runs.folder import INDEX_NAME, FolderPlan, IndexFile, error_without_path


def segment_folder_on_ray(
    plan: FolderPlan, vocabulary, options, settings, concurrency: int, engine: dict, outputs: dict | None = None
) -> int:
    """--engine ray: the actors segment --concurrency images per batch and send back each
    image's files (with ``outputs``' instances.json and panoptic files); this process writes
    the folders and index.jsonl as for a local run."""
    index = IndexFile(plan.out / INDEX_NAME)
    folders = dict(plan.todo)
    counts = {"ok": 0, "failed": 0}
    try:
        for row in segment_files_on_ray(
            [image for image, _ in plan.todo],
            vocabulary,
            options=options,
            settings=settings,
            images_per_task=concurrency,
            instances=bool((outputs or {}).get("instances")),
            panoptic=(outputs or {}).get("panoptic"),
            **engine,
        ):
            image = row["path"]
            folder = folders[image]
            error = error_without_path(row["error"], image) if row["error"] else None
            if error is None:
                try:
                    for name, data in row["files"].items():
                        target = plan.out / folder / name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        write_atomically(target, lambda handle, data=data: handle.write(data))
                except OSError as exc:
                    error = f"could not write {plan.out / folder}: {exc.strerror or exc}"
            classes = (
                {
                    c["name"]: round(c["area_fraction"], 6)
                    for c in sorted(json.loads(row["classes"]), key=lambda c: -c["pixels"])
                }
                if not error
                else {}
            )
            run_id = None
            if error is None:
                run_id = json.loads((plan.out / folder / "result.json").read_text(encoding="utf-8")).get("run_id")
            index.write(
                {
                    "image": image,
                    "out": folder if error is None else None,
                    "ok": error is None,
                    "error": error,
                    "seconds": json.loads(row["trace"])["seconds"],
                    "classes": classes,
                    "run_id": run_id,
                }
            )
            counts["failed" if error else "ok"] += 1
            if error:
                print(f"openseg-r: skipped {image}: {error}", file=sys.stderr, flush=True)
            else:
                print(f"{image} -> {plan.out / folder}: {', '.join(list(classes)[:3]) or 'no class'}", flush=True)
    finally:
        index.close()
    already = f", {len(plan.done)} already done" if plan.done else ""
    print(
        f"segmented {counts['ok']} of {len(plan.todo)} image(s) ({counts['failed']} failed{already}); "
        f"index: {plan.out / INDEX_NAME}"
    )
    return counts["failed"]
