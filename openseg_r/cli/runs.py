"""``openseg-r runs list|show|diff|replay|resume|report`` and ``openseg-r graph --mermaid``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from openseg_r.cli.options import EXIT_OK, Parser, add_lmm_options, add_model_options, model_option_values


def add_parsers(commands) -> None:
    runs = commands.add_parser("runs", help="inspect, compare, replay and report recorded runs")
    runs.add_argument("--runs-db", default=None, help="the runs database (default: the user data dir)")
    runs.set_defaults(handler=run_runs)
    actions = runs.add_subparsers(dest="action", required=True, parser_class=Parser)
    listing = actions.add_parser("list", help="recorded runs, newest first")
    listing.add_argument("--limit", type=int, default=50, help="show at most this many runs (default: 50)")
    show = actions.add_parser("show", help="each step of a run, in order")
    show.add_argument("run", help="a run id, or the start of one (as `runs list` shows it)")
    show.add_argument("--step", default=None, help="print this node's full output as JSON")
    show.add_argument("--json", action="store_true", help="every step's full output as JSON")
    diff = actions.add_parser("diff", help="what differs between two runs: reasoning, prompts, class areas")
    diff.add_argument("run_a", help="a run id, or the start of one (as `runs list` shows it)")
    diff.add_argument("run_b", help="the run to compare it with")
    for name, text in (
        ("replay", "re-run from a node, reusing everything recorded before it"),
        ("resume", "continue a run that crashed or stopped, from its last checkpoint"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("run", help="a run id, or the start of one (as `runs list` shows it)")
        if name == "replay":
            action.add_argument(
                "--from", dest="from_node", required=True, help="prompt_composition, segmentation or self_check"
            )
            action.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="change a setting, e.g. self_check.enabled=true or class_filter=soft",
            )
        action.add_argument(
            "--out",
            default=None,
            help="also write labels.png, overlay.png, result.json here "
            "(resume: by default where the run's own --out was)",
        )
        add_model_options(action, defaults_from_run=True)
        add_lmm_options(action, defaults_from_run=True)
    report = actions.add_parser("report", help="one self-contained HTML file")
    report.add_argument("run", help="a run id, or the start of one (as `runs list` shows it)")
    report.add_argument("-o", "--out", required=True, help="the HTML file to write")

    graph = commands.add_parser("graph", help="print the graph's picture")
    graph.add_argument("--mermaid", action="store_true", help="Mermaid text (drawn locally, no web service)")
    graph.set_defaults(handler=run_graph)


def run_graph(args: argparse.Namespace) -> int:
    from openseg_r.graph import build_graph

    print(build_graph().get_graph().draw_mermaid())
    return EXIT_OK


READING_ACTIONS = ("list", "show", "diff", "report")  # open the database read-only: they create nothing


def run_runs(args: argparse.Namespace) -> int:
    """Every action needs recorded runs, so none creates a database; the reading ones open
    it read-only. A missing database lists as no runs (exit 0), like an empty one; asking
    it for a run is an error (exit 2), as for an unknown run."""
    from openseg_r.runs.database import NoRunsDatabaseError, RunsDB

    try:
        db = RunsDB(args.runs_db, read_only=args.action in READING_ACTIONS, create=False)
    except NoRunsDatabaseError as exc:
        if args.action != "list":
            raise
        print(f"no runs recorded ({exc})")
        return EXIT_OK
    try:
        return {"list": _list, "show": _show, "diff": _diff, "replay": _replay, "resume": _replay, "report": _report}[
            args.action
        ](db, args)
    finally:
        db.close()


def _graph(db):
    from openseg_r.graph import build_graph

    return build_graph(checkpointer=db.checkpointer)


def _list(db, args) -> int:
    records = db.list_runs(args.limit)
    if not records:
        print(f"no runs recorded in {db.path}")
        return EXIT_OK
    print(f"{'run':12s}  {'date':19s}  {'status':11s}  {'seconds':>7s}  {'classes':>7s}  {'backend':22s}  image")
    for r in records:
        when = _when(r.created)
        seconds = f"{r.seconds:7.2f}" if r.seconds is not None else "      -"
        image = r.image or "(data)"
        extra = f"  [replay of {r.parent_run[:12]} from {r.replay_from}]" if r.parent_run else ""
        extra += f"  [resumed {_when(r.resumed_at)}]" if r.resumed_at else ""
        print(
            f"{r.run_id[:12]}  {when}  {r.status:11s}  {seconds}  {r.classes or 0:7d}  "
            f"{(r.backend or 'none')[:22]:22s}  {image}{extra}"
        )
    return EXIT_OK


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _show(db, args) -> int:
    from openseg_r.runs.inspect import load_run, summarize_step

    run = load_run(db, args.run, _graph(db))
    r = run.record
    print(
        f"run {r.run_id}  {r.status}  {_when(r.created)}"
        + (f"  resumed {_when(r.resumed_at)}" if r.resumed_at else "")
        + f"  {'' if r.seconds is None else f'{r.seconds:.2f} s'}"
    )
    print(f"image {r.image or '(data)'}  vocabulary {r.vocabulary} ({r.classes} classes)  backend {r.backend}")
    if r.status == "running":
        print(f"running in {r.owner}; next: {', '.join(run.next_nodes) or 'unknown'}")
    elif r.status != "done":
        print(
            f"stopped before: {r.stopped_at or ', '.join(run.next_nodes) or 'unknown'}"
            + (f"  error: {r.error}" if r.error else "")
        )
    if r.status == "interrupted":
        print(f"its {r.owner} is gone; `openseg-r runs resume {r.run_id[:12]}` continues it")
    if args.step:
        chosen = [s for s in run.steps if s.node == args.step]
        if not chosen:
            from openseg_r.errors import ConfigError

            nodes = ", ".join(dict.fromkeys(s.node for s in run.steps))
            raise ConfigError(f"run {r.run_id} has no step {args.step!r}; it has: {nodes}")
        print(
            json.dumps(
                [s.output for s in chosen] if len(chosen) > 1 else chosen[0].output, indent=2, ensure_ascii=False
            )
        )
        return EXIT_OK
    for step in run.steps:
        seconds = next((t["seconds"] for t in step.output.get("timings", [])), None)
        timing = f"{seconds:7.3f} s" if seconds is not None else "        "
        print(f"{step.index:3d}. [{step.superstep}] {step.node:24s} {timing}  {summarize_step(step)}")
        if args.json:
            print(json.dumps(step.output, indent=2, ensure_ascii=False))
    return EXIT_OK


def _diff(db, args) -> int:
    from openseg_r.runs.diff import diff_runs
    from openseg_r.runs.inspect import load_run

    graph = _graph(db)
    a, b = load_run(db, args.run_a, graph), load_run(db, args.run_b, graph)
    print("\n".join(diff_runs(a, b)))
    return EXIT_OK


def _replay(db, args) -> int:
    from openseg_r.cli.summary import print_result_summary
    from openseg_r.runs.events import TerminalProgress

    record = db.get_run(args.run)
    db.require_image(record)  # before loading any model
    out = args.out or (record.output if args.action == "resume" else None)  # a resumed run writes where it did
    if out:
        from openseg_r._support.files import check_output_folder

        check_output_folder(out)
    model = _model_for(record, args, db)
    progress = TerminalProgress() if sys.stderr.isatty() else None
    if args.action == "resume":
        run = model.resume(record.run_id, on_event=progress)
    else:
        run = model.replay(record.run_id, args.from_node, on_event=progress, **_settings_overrides(args.set))
    result = run.result
    if result is None:
        print(f"run {run.run_id} is waiting for answers to {len(run.questions)} self-check question(s)")
        return EXIT_OK
    how = "resumed" if args.action == "resume" else f"replay of {record.run_id} from {args.from_node}"
    print(f"run {run.run_id} ({how})")
    print_result_summary(result, out)
    return EXIT_OK


def _model_for(record, args, db):
    """The model recorded with the run (its ModelOptions), with the options given here on top."""
    from openseg_r.config.options import ModelOptions, upgraded_record
    from openseg_r.model import OpenSegR

    given = model_option_values(args)
    stored = upgraded_record(record.options or {})
    if given.get("segmenter") and given["segmenter"] != stored.get("segmenter"):  # another kind: not its options
        stored = {k: v for k, v in stored.items() if k != "segmenter_options"} | {"segmenter": given["segmenter"]}
    options = ModelOptions.from_recorded(stored).with_overrides(**given)
    return OpenSegR.from_options(options.model_copy(update={"redact": bool(record.redact)}), runs_db=db)


def _settings_overrides(items: list[str]) -> dict:
    """``a.b=value`` pairs -> a nested dict; values are JSON where they parse, else text."""
    from openseg_r.errors import ConfigError

    overrides: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = overrides
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return overrides


def _report(db, args) -> int:
    from openseg_r._support.files import write_atomically
    from openseg_r.runs.inspect import load_run
    from openseg_r.runs.report import render_report

    run = load_run(db, args.run, _graph(db))
    text = render_report(run)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, lambda f: f.write(text.encode("utf-8")))
    missing = f" ({len(run.missing)} artifact(s) missing from the store)" if run.missing else ""
    print(f"wrote {out}{missing}")
    return EXIT_OK
