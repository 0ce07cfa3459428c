"""How often each image took its actor down with it: the per-image crash budget.

Ray Data restarts a dead actor and runs its batch again, without end. An image that kills
its worker every time (a decoder bug, a native crash, memory it cannot have) would then
be retried forever. So an actor tells the driver's :class:`CrashLedger` (a small Ray
actor) when it starts an image and when it is done with it; an image started and never
finished was in flight when its worker died.

- A batch holding an image that crashed before is evaluated one image at a time, so a
  second crash is charged to that image alone, not to the images beside it.
- An image that crashed its worker ``budget`` times is not tried again: its row says so
  (one line), and the driver writes it to ``failed.jsonl`` like any other failure.
"""

from __future__ import annotations

DEFAULT_CRASH_BUDGET = 2


class CrashLedger:
    """Per image: starts and finishes. Runs as a Ray actor on the driver's node."""

    def __init__(self, budget: int = DEFAULT_CRASH_BUDGET) -> None:
        self.budget = budget
        self.started: dict[str, int] = {}
        self.finished: dict[str, int] = {}

    def crashes(self, image_ids: list[str]) -> dict[str, int]:
        """How many times each image was started and never finished."""
        return {i: self.started.get(i, 0) - self.finished.get(i, 0) for i in image_ids}

    def start(self, image_id: str) -> int | None:
        """Record a start and return None, or, for an image out of its budget, its crashes (do not run it)."""
        crashed = self.started.get(image_id, 0) - self.finished.get(image_id, 0)
        if crashed >= self.budget:
            return crashed
        self.started[image_id] = self.started.get(image_id, 0) + 1
        return None

    def finish(self, image_id: str) -> None:
        self.finished[image_id] = self.finished.get(image_id, 0) + 1


def crash_message(crashes: int) -> str:
    return (
        f"this image crashed its Ray worker {crashes} time(s) (the worker process died while it was being "
        "processed); not tried again"
    )


class LedgerClient:
    """What an actor holds: the ledger's Ray handle (or None: no budget), called synchronously."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def suspects(self, image_ids: list[str]) -> bool:
        """Whether any of these images crashed a worker before: then the batch runs one at a time."""
        if self.handle is None:
            return False
        import ray

        return any(count > 0 for count in ray.get(self.handle.crashes.remote(image_ids)).values())

    def start(self, image_id: str) -> str | None:
        """None: go on; else the one-line error of an image out of its crash budget."""
        if self.handle is None:
            return None
        import ray

        crashed = ray.get(self.handle.start.remote(image_id))
        return None if crashed is None else crash_message(crashed)

    def finish(self, image_id: str) -> None:
        if self.handle is not None:
            import ray

            ray.get(self.handle.finish.remote(image_id))


def start_ledger(ray, budget: int = DEFAULT_CRASH_BUDGET):
    """A ledger actor for one job (it ends with the driver)."""
    return ray.remote(num_cpus=0)(CrashLedger).remote(budget)
