"""A run beside its bare-name baseline: the same image and classes with reasoning off."""

from __future__ import annotations

import html

import numpy as np

from openseg_r._support.render import class_colors, format_share

BASELINE_SETTINGS = {"reasoning": False, "self_check": {"enabled": False}}


def comparison_html(names: list[str], run_labels: np.ndarray, baseline_labels: np.ndarray) -> str:
    """Per class, its share of the image in the run and in the baseline; and how many
    pixels the two label maps disagree on."""
    total = max(1, run_labels.size)
    run_counts = _counts(run_labels, len(names))
    base_counts = _counts(baseline_labels, len(names))
    colours = class_colors(len(names))
    order = [i for i in np.argsort(-(run_counts + base_counts), kind="stable") if run_counts[i] or base_counts[i]]
    rows = []
    for index in order:
        colour = "#%02x%02x%02x" % tuple(int(v) for v in colours[index])
        rows.append(
            f"<tr data-class='{html.escape(names[index], quote=True)}'>"
            f"<td><span class=swatch style='background:{colour}'></span> {html.escape(names[index])}</td>"
            f"<td>{format_share(run_counts[index] / total, present=run_counts[index] > 0)}</td>"
            f"<td>{format_share(base_counts[index] / total, present=base_counts[index] > 0)}</td></tr>"
        )
    changed = int((run_labels != baseline_labels).sum())
    return (
        f"<p data-section='difference'>The two label maps differ on "
        f"{format_share(changed / total, present=changed > 0)} of the pixels ({changed:,}).</p>"
        "<table data-section='comparison'><tr><th>class</th><th>with reasoning</th><th>bare names</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _counts(labels: np.ndarray, classes: int) -> np.ndarray:
    flat = labels.ravel()
    return np.bincount(flat[flat >= 0], minlength=classes)[:classes]
