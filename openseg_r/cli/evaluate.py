"""``openseg-r eval`` and ``openseg-r eval merge``.

An image whose reasoning was asked for but got none at all (the LMM unreachable, every
answer unusable) stops the evaluation with exit code 4 (a benchmark number silently
computed with bare names would be wrong); the images finished before it are kept, and
running the same command again resumes. ``--allow-fallback`` evaluates such images with
bare class names instead."""

from __future__ import annotations

import argparse
import sys

from openseg_r.cli.options import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_engine_options,
    add_lmm_options,
    add_model_options,
    add_protocol_option,
    add_scoring_options,
    add_segmenter_options,
    add_throughput_options,
    concurrency_option,
    engine_values,
    model_options,
    options_and_settings,
)


def add_parsers(commands) -> None:
    from openseg_r.evals.datasets import DATASETS
    from openseg_r.evals.instances import INSTANCE_DATASET
    from openseg_r.evals.panoptic import PANOPTIC_DATASET

    run = commands.add_parser("eval", help="evaluate on a benchmark (or `eval merge` shards)")
    run.add_argument(
        "--dataset",
        required=True,
        choices=[*DATASETS, INSTANCE_DATASET, PANOPTIC_DATASET],
        help="the benchmark; 'folder' is any images/ + labels/ + classes.txt folder; 'coco-instances' is a COCO "
        "instances JSON and its images, scored by mask AP (segmenters that find instances); 'coco-panoptic' is "
        "a COCO panoptic JSON, its PNGs and images, scored by PQ",
    )
    run.add_argument(
        "--annotations",
        default=None,
        help="coco-instances: the instances JSON (default: annotations/instances_val2017.json, "
        "annotations/instances.json or instances.json under --root); coco-panoptic: the panoptic JSON (default: "
        "annotations/panoptic_val2017.json, panoptic_val2017.json or panoptic.json), its PNGs in the folder of "
        "the same name",
    )
    run.add_argument(
        "--min-segment-area",
        type=int,
        default=None,
        metavar="PIXELS",
        help="coco-panoptic: predicted segments smaller than this are dropped (default: 64)",
    )
    run.add_argument("--root", required=True, help="the dataset folder, as the mmseg/detectron2 scripts lay it out")
    run.add_argument("--split", default=None, help="default: the dataset's validation split")
    run.add_argument(
        "--ablation",
        action="store_true",
        help="bare names, generic, generic+image, +class filter, +self-check in one pass",
    )
    run.add_argument("--limit", type=int, default=None, help="a deterministic subset of N images")
    run.add_argument("--seed", type=int, default=0, help="which subset --limit draws (default: 0)")
    run.add_argument(
        "--shard",
        default=None,
        help="i/n: this process's share of the images; 'auto' takes RANK/WORLD_SIZE (torchrun) and "
        "writes to OUT/shard-i-of-n",
    )
    run.add_argument("--out", default="eval-out", help="results folder; re-running resumes it (default: eval-out)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.add_argument(
        "--vocab",
        default=None,
        help="a built-in vocabulary or file with the dataset's classes in label order, e.g. "
        "pc59-syn for OpenSeg-R's synonyms (default: the dataset's own class names)",
    )
    add_protocol_option(run, default="auto")
    add_model_options(run)
    add_lmm_options(run, allow_fallback=True)
    add_segmenter_options(run, with_max_pixels=False)
    add_scoring_options(run)
    add_throughput_options(run)
    add_engine_options(run)
    run.set_defaults(handler=run_eval_command)
    merge = commands.add_parser("eval-merge", help="the same as `eval merge DIR... --out DIR`: add up shards")
    merge.add_argument("folders", nargs="+", help="the shards' --out folders")
    merge.add_argument("--out", required=True, help="the folder for the merged results")
    merge.set_defaults(handler=run_merge_command)


def run_eval_command(args: argparse.Namespace) -> int:
    from openseg_r.config.settings import Settings
    from openseg_r.evals.datasets import get_dataset
    from openseg_r.evals.instances import INSTANCE_DATASET
    from openseg_r.evals.panoptic import PANOPTIC_DATASET
    from openseg_r.evals.runner import run_eval
    from openseg_r.lmm.spec import configured_spec, names_an_lmm

    if args.dataset == INSTANCE_DATASET:
        return _run_instance_eval(args)
    if args.dataset == PANOPTIC_DATASET:
        return _run_panoptic_eval(args)
    if args.min_segment_area is not None:
        from openseg_r.errors import ConfigError

        raise ConfigError("--min-segment-area is for --dataset coco-panoptic")
    dataset = get_dataset(args.dataset)
    concurrency = concurrency_option(args)
    engine = engine_values(args)
    protocol = dataset_protocol(args.dataset, args.protocol, kind=model_options(args).segmenter)
    has_lmm = names_an_lmm(configured_spec(args.lmm))
    options, settings = options_and_settings(args, protocol, Settings(reasoning=has_lmm))
    vocabulary = None
    if args.vocab or (protocol is not None and protocol.vocabulary != dataset.vocabulary):
        from openseg_r.vocab import load_named_vocabulary  # the protocol's own class list, unless --vocab

        vocabulary = load_named_vocabulary(args.vocab or protocol.vocabulary)
    shard, out, options = shard_and_out(args, options)
    dataset.samples(args.root, args.split)  # a wrong layout fails before any model loads
    from openseg_r._support.files import check_output_folder

    check_output_folder(out)  # and so does an --out that cannot be written
    if engine:
        return _run_on_ray(args, dataset, options, settings, vocabulary, protocol, shard, concurrency, engine)
    from openseg_r.model import OpenSegR

    model = OpenSegR.from_options(options, settings=settings)
    run_eval(
        model,
        dataset,
        args.root,
        out,
        split=args.split,
        ablation=args.ablation,
        limit=args.limit,
        seed=args.seed,
        shard=shard,
        progress=not args.no_progress and sys.stderr.isatty(),
        vocabulary=vocabulary,
        protocol=protocol.describe() if protocol else None,
        concurrency=concurrency,
    )
    _print_summary(out)
    return EXIT_OK


def _run_on_ray(args, dataset, options, settings, vocabulary, protocol, shard, concurrency, engine) -> int:
    """--engine ray: the same folder and report; each actor evaluates --concurrency images at once."""
    from openseg_r.distributed import run_eval_on_ray

    no_shard_on_ray(shard)
    state = run_eval_on_ray(
        options,
        dataset,
        args.root,
        args.out,
        split=args.split,
        limit=args.limit,
        seed=args.seed,
        ablation=args.ablation,
        vocabulary=vocabulary,
        settings=settings,
        protocol=protocol.describe() if protocol else None,
        images_per_task=concurrency,
        progress=not args.no_progress and sys.stderr.isatty(),
        **engine,
    )
    _print_summary(args.out)
    return EXIT_SOME_FAILED if state.failed else EXIT_OK


def shard_and_out(args: argparse.Namespace, options):
    """--shard: (shard, the folder to write, the options). With 'auto', the launcher's rank
    and world size, the folder OUT/shard-i-of-n, and the local rank's GPU when none is set."""
    from openseg_r.evals.runner import parse_shard

    if args.shard != "auto":
        return parse_shard(args.shard), args.out, options
    shard, local_rank = launcher_shard()
    if options.device is None and local_rank is not None:
        import torch

        if torch.cuda.is_available():
            options = options.with_overrides(device=f"cuda:{local_rank}")
    return shard, f"{args.out}/shard-{shard[0]}-of-{shard[1]}", options


def no_shard_on_ray(shard) -> None:
    from openseg_r.errors import ConfigError

    if shard is not None:
        raise ConfigError("--shard splits the work by hand: with --engine ray the cluster shares it out, drop --shard")


def dataset_protocol(dataset: str, choice: str | None, kind: str = "dense-clip"):
    """--protocol: auto (the default) is the dataset's published protocol, when it has one and
    it was published for the segmenter kind in use (another kind evaluates with its own
    options, and the report says no protocol)."""
    from openseg_r.config.presets import NONE, PROTOCOLS, protocol_for, published_protocol

    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        protocol = published_protocol(dataset, kind)
        if protocol is None and dataset in PROTOCOLS:
            print(
                f"note: no protocol was published for {dataset} with the {kind} segmenter; it runs with its own "
                "options (--protocol none)",
                file=sys.stderr,
            )
        return protocol
    return protocol_for(choice or NONE, dataset)


def launcher_shard() -> tuple[tuple[int, int], int | None]:
    """(rank, world size) and the local rank, from the variables torchrun (or a Ray/Slurm
    wrapper that sets them) gives each process."""
    import os

    from openseg_r.errors import ConfigError
    from openseg_r.evals.runner import parse_shard

    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        raise ConfigError("--shard auto needs RANK and WORLD_SIZE in the environment (torchrun sets them)") from None
    local = os.environ.get("LOCAL_RANK")
    return parse_shard(f"{rank}/{world}"), int(local) if local and local.isdigit() else None


def run_merge_command(args: argparse.Namespace) -> int:
    from openseg_r.evals.panoptic import is_panoptic_run, merge_panoptic
    from openseg_r.evals.runner import merge

    if args.folders and is_panoptic_run(args.folders[0]):
        merge_panoptic(args.folders, args.out)
    else:
        merge(args.folders, args.out)
    _print_summary(args.out)
    return EXIT_OK


def _run_instance_eval(args: argparse.Namespace) -> int:
    """``--dataset coco-instances``: mask AP with COCOeval (no protocol, no ablation, one process)."""
    from openseg_r.config.settings import Settings
    from openseg_r.errors import ConfigError
    from openseg_r.evals.instances import annotations_file, run_instance_eval
    from openseg_r.lmm.spec import configured_spec, names_an_lmm

    if args.ablation or args.shard or engine_values(args):
        raise ConfigError("coco-instances runs one pass in this process: no --ablation, --shard or --engine")
    options, settings = options_and_settings(args, None, Settings(reasoning=names_an_lmm(configured_spec(args.lmm))))
    if not options.kind.instances:
        raise ConfigError(
            f"coco-instances scores instances: the {options.segmenter} segmenter gives a label map only (use sam3)"
        )
    annotations_file(args.root, args.annotations)  # a missing file fails before any model loads
    from openseg_r._support.files import check_output_folder
    from openseg_r.model import OpenSegR

    check_output_folder(args.out)
    model = OpenSegR.from_options(options, settings=settings)
    run_instance_eval(model, args.root, args.out, annotations=args.annotations, limit=args.limit)
    _print_summary(args.out)
    return EXIT_OK


def _run_panoptic_eval(args: argparse.Namespace) -> int:
    """``--dataset coco-panoptic``: PQ, SQ and RQ, run as the semantic benchmarks run
    (resume, --shard, --ablation, --concurrency, --engine ray, `eval merge`)."""
    from openseg_r._support.files import check_output_folder
    from openseg_r.config.settings import Settings
    from openseg_r.errors import ConfigError
    from openseg_r.evals.panoptic import PanopticDataset, run_panoptic_eval
    from openseg_r.lmm.spec import configured_spec, names_an_lmm
    from openseg_r.panoptic.build import DEFAULT_MIN_AREA

    if args.split is not None:
        raise ConfigError("coco-panoptic has no splits: --annotations names the JSON to evaluate")
    if (args.protocol or "auto").strip().lower() not in ("auto", "none"):
        raise ConfigError(
            f"--protocol {args.protocol} is a semantic benchmark's published settings; coco-panoptic runs with "
            "the segmenter's own options"
        )
    area = args.min_segment_area if args.min_segment_area is not None else DEFAULT_MIN_AREA
    if area < 1:
        raise ConfigError(f"--min-segment-area must be at least 1 pixel, not {area}")
    concurrency = concurrency_option(args)
    engine = engine_values(args)
    if engine:
        no_shard_on_ray(args.shard)  # flags first: before the dataset is read
    has_lmm = names_an_lmm(configured_spec(args.lmm))
    if args.ablation and not has_lmm:
        raise ConfigError(
            "--ablation compares reasoning settings: give an LMM (--lmm), a replay file, or a scripted one"
        )
    options, settings = options_and_settings(args, None, Settings(reasoning=has_lmm))
    dataset = PanopticDataset(args.root, args.annotations)
    vocabulary = None
    if args.vocab:
        from openseg_r.vocab import load_named_vocabulary

        vocabulary = load_named_vocabulary(args.vocab)
    dataset.vocabulary(vocabulary)  # a category the vocabulary lacks fails here
    if dataset.matched_by_position:
        names = ", ".join(repr(name) for name in dataset.matched_by_position[:5])
        more = len(dataset.matched_by_position) - 5
        print(
            f"note: {len(dataset.matched_by_position)} categories have other names in {args.vocab} and were matched "
            f"by position: {names}{f' and {more} more' if more > 0 else ''}",
            file=sys.stderr,
        )
    dataset.check()  # and so does a PNG that does not match its JSON, before any model loads
    shard, out, options = shard_and_out(args, options)
    check_output_folder(out)
    progress = not args.no_progress and sys.stderr.isatty()
    common = {"min_area": area, "limit": args.limit, "seed": args.seed, "vocabulary": vocabulary}
    if engine:
        from openseg_r.distributed import run_panoptic_eval_on_ray

        summary = run_panoptic_eval_on_ray(
            options,
            dataset,
            out,
            ablation=args.ablation,
            settings=settings,
            images_per_task=concurrency,
            progress=progress,
            **common,
            **engine,
        )
        _print_summary(out)
        return EXIT_SOME_FAILED if summary.get("failed") else EXIT_OK
    from openseg_r.model import OpenSegR

    model = OpenSegR.from_options(options, settings=settings)
    run_panoptic_eval(
        model, dataset, out, shard=shard, ablation=args.ablation, concurrency=concurrency, progress=progress, **common
    )
    _print_summary(out)
    return EXIT_OK


def _print_summary(out) -> None:
    from pathlib import Path

    print((Path(out) / "summary.md").read_text(), end="")
    print(f"wrote {Path(out) / 'summary.md'} and {Path(out) / 'summary.json'}")
