"""Faults injected into Ray's worker processes for tests/test_ray.py.

Ray runs the actors in other processes, where ``monkeypatch`` cannot reach. The test
session starts its cluster with ``worker_process_setup_hook="ray_faults.install"``: every
worker of the session's jobs wraps ``openseg_r.evals.runner.evaluate_image`` (the
per-image function the local runner and the Ray actors share; the actors look it up at
call time) so that, per image, it reads the JSON file named by ``$OPENSEG_R_TEST_FAULTS``
(no file: no fault) and may

- ``seen``: append ``"<id> <pid> <time> <threads>"`` to a log file (which images were
  evaluated, where, when they started: ``time.time()``, and with how many torch threads);
- ``crash_once``: ``os._exit(1)`` on image ``id`` if the ``marker`` file does not exist
  yet (creating it first, atomically), so only the first attempt dies;
- ``crash_always``: ``os._exit(1)`` on each image of this list, every time;
- ``hold``: wait while the file ``while_exists`` exists, for the images in ``ids``.

Only the standard library at import: the hook runs in every worker before any task.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

FAULTS_VARIABLE = "OPENSEG_R_TEST_FAULTS"


def install() -> None:
    import openseg_r.evals.runner as runner

    real = runner.evaluate_image
    if getattr(real, "wrapped_by_ray_faults", False):
        return

    def evaluate_image(model, dataset, vocabulary, sample, *args, **kwargs):
        apply_faults(sample.id)
        return real(model, dataset, vocabulary, sample, *args, **kwargs)

    evaluate_image.wrapped_by_ray_faults = True
    runner.evaluate_image = evaluate_image


def read_faults() -> dict:
    path = os.environ.get(FAULTS_VARIABLE)
    if not path:
        return {}
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def apply_faults(image_id: str) -> None:
    faults = read_faults()
    seen = faults.get("seen")
    if seen:
        import torch  # imported by the model already

        with open(seen, "a", encoding="utf-8") as log:  # one short write per line: whole lines
            log.write(f"{image_id} {os.getpid()} {time.time():.3f} {torch.get_num_threads()}\n")
    crash = faults.get("crash_once")
    if crash and crash["id"] == image_id:
        try:
            os.close(os.open(crash["marker"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass  # a later attempt: go on
        else:
            os._exit(1)  # the actor's process dies here, mid-batch, as a crashed node would
    if image_id in faults.get("crash_always", ()):
        os._exit(1)
    hold = faults.get("hold")
    if hold and image_id in hold["ids"]:
        while Path(hold["while_exists"]).exists():
            time.sleep(0.1)
