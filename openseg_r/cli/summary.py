"""What ``segment`` and ``runs replay/resume`` print about a result."""

from __future__ import annotations

import sys

from openseg_r._support.render import format_share

MAX_FALLBACK_LINES = 5


def print_result_summary(result, out_dir: str | None, outputs: dict | None = None) -> None:
    """Classes found, fallbacks, the self-check, the run id, and the files written (``outputs``:
    :meth:`SegmentationResult.save`'s ``instances`` and ``panoptic``)."""
    paths = result.save(out_dir, **(outputs or {})) if out_dir else None
    for summary in sorted(result.classes, key=lambda c: -c.pixels):
        if summary.pixels:
            print(
                f"{summary.name:24s} {format_share(summary.area_fraction, 2, present=True):>7s}  "
                f"confidence {summary.mean_confidence:.3f}"
            )
    fallbacks = result.state.fallbacks
    for fallback in fallbacks[:MAX_FALLBACK_LINES]:
        subject = f" [{fallback.subject}]" if fallback.subject else ""
        print(f"fallback in {fallback.step}{subject}: {fallback.reason} -> {fallback.used}", file=sys.stderr)
    if len(fallbacks) > MAX_FALLBACK_LINES:
        print(f"... and {len(fallbacks) - MAX_FALLBACK_LINES} more fallbacks, listed in result.json", file=sys.stderr)
    check = result.state.self_check
    if check is not None:
        changed = sum(c.pixels_changed for c in check.changes)
        asked = sum(len(r.regions) for r in check.rounds)
        print(
            f"self-check: {asked} region(s) asked in {check.round} round(s), {check.calls_used} LMM call(s), "
            f"{changed} pixel(s) changed; stopped: {check.stopped}"
        )
    if result.run_id:
        print(f"run id: {result.run_id} (openseg-r runs show {result.run_id[:12]})")
    if paths:
        print(f"wrote {', '.join(str(path) for path in paths.values())}")
