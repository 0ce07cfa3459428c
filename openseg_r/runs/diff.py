"""``openseg-r runs diff A B``: what differs between two runs, section by section:
settings, reasoning (generic and image), class filter, composed prompts, class areas
and the self-check. Typical uses: with and without reasoning, or two LMM backends."""

from __future__ import annotations

from openseg_r.runs.inspect import RecordedRun

AREA_EPSILON = 0.0005  # area-share changes below 0.05 points are not listed


def diff_runs(a: RecordedRun, b: RecordedRun) -> list[str]:
    lines = [
        f"A {a.record.run_id}  ({a.record.status}, backend {a.record.backend})",
        f"B {b.record.run_id}  ({b.record.status}, backend {b.record.backend})",
    ]
    if a.state is None or b.state is None:
        return lines + ["one of the runs has no recorded state"]
    sa, sb = a.state, b.state
    lines += _section("settings", _dict_diff(sa.settings.model_dump(), sb.settings.model_dump()))
    lines += _section("generic reasoning", _generic(sa.generic_reasoning or {}, sb.generic_reasoning or {}))
    lines += _section("image reasoning", _image(sa, sb))
    present_a = sa.alignment.present if sa.alignment else None
    present_b = sb.alignment.present if sb.alignment else None
    if present_a != present_b:
        lines += _section("class filter", [f"A: {_present(present_a)}", f"B: {_present(present_b)}"])
    else:
        lines += _section("class filter", [])
    lines += _section("prompts", _prompts(sa, sb))
    lines += _section("class areas", _areas(sa, sb))
    lines += _section("self-check", _self_check(sa, sb))
    return lines


def _section(title: str, body: list[str]) -> list[str]:
    return [f"== {title}: " + ("same" if not body else f"{len(body)} difference(s)")] + [f"   {line}" for line in body]


def _present(present) -> str:
    return ", ".join(present) if present else "no filtering"


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return out


def _generic(a: dict, b: dict) -> list[str]:
    out = []
    for name in sorted(set(a) | set(b)):
        ra, rb = a.get(name), b.get(name)
        if ra is None or rb is None:
            out.append(f"{name}: only in {'B' if ra is None else 'A'}")
        elif ra.attributes != rb.attributes or ra.general_category != rb.general_category:
            out.append(f"{name}: A [{', '.join(ra.attributes)}] / B [{', '.join(rb.attributes)}]")
    return out


def _image(sa, sb) -> list[str]:
    ia, ib = sa.image_reasoning, sb.image_reasoning
    if ia is None and ib is None:
        return []
    if ia is None or ib is None:
        return [f"only {'B' if ia is None else 'A'} has image reasoning"]
    out = []
    if ia.description != ib.description:
        out += [f"description A: {ia.description[:120]}", f"description B: {ib.description[:120]}"]
    ca = {c.name: c.attributes for c in ia.candidates}
    cb = {c.name: c.attributes for c in ib.candidates}
    for name in sorted(set(ca) | set(cb)):
        if ca.get(name) != cb.get(name):
            out.append(f"candidate {name}: A {ca.get(name)} / B {cb.get(name)}")
    return out


def _prompts(sa, sb) -> list[str]:
    if sa.prompts is None or sb.prompts is None:
        return [] if sa.prompts is sb.prompts else ["only one run composed prompts"]
    pa = {c.name: (c.source, c.slots) for c in sa.prompts.classes}
    pb = {c.name: (c.source, c.slots) for c in sb.prompts.classes}
    out = []
    for name in [n for n in pa if n in pb] + sorted(set(pa) ^ set(pb)):
        if pa.get(name) != pb.get(name):
            out.append(f"{name}: A {_slots(pa.get(name))} / B {_slots(pb.get(name))}")
    return out


def _slots(entry) -> str:
    if entry is None:
        return "absent"
    source, slots = entry
    return f"{source}: " + " | ".join(s if s is not None else "(bare)" for s in slots)


def _areas(sa, sb) -> list[str]:
    if sa.report is None or sb.report is None:
        return ["only one run finished"] if sa.report is not sb.report else []
    fa = {c.name: c.area_fraction for c in sa.report.classes}
    fb = {c.name: c.area_fraction for c in sb.report.classes}
    changes = sorted(
        ((name, fa.get(name, 0.0), fb.get(name, 0.0)) for name in set(fa) | set(fb)),
        key=lambda item: -abs(item[2] - item[1]),
    )
    return [
        f"{name}: {100 * x:.2f}% -> {100 * y:.2f}% ({100 * (y - x):+.2f})"
        for name, x, y in changes
        if abs(y - x) >= AREA_EPSILON
    ]


def _self_check(sa, sb) -> list[str]:
    ca, cb = sa.self_check, sb.self_check
    if ca is None and cb is None:
        return []

    def text(check):
        if check is None:
            return "did not run"
        return (
            f"{check.calls_used} call(s), {sum(c.pixels_changed for c in check.changes)} pixel(s) changed; "
            f"{check.stopped}"
        )

    return [f"A: {text(ca)}", f"B: {text(cb)}"] if text(ca) != text(cb) else []
