"""Batch segmentation on Ray: :func:`segment_dataset` for users' own Ray Data pipelines,
:func:`segment_files_on_ray` for ``openseg-r segment --engine ray``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

from openseg_r.config.options import DEFAULT_IMAGES_PER_TASK, ModelOptions
from openseg_r.distributed.actors import SegmentActor
from openseg_r.distributed.cluster import (
    DEFAULT_CPUS_PER_ACTOR,
    actor_threads,
    checked_cpus_per_actor,
    connect,
    require_ray,
)
from openseg_r.errors import ConfigError


def segment_dataset(
    ds,
    vocabulary,
    *,
    options: ModelOptions,
    settings=None,
    actors: int = 2,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR,
    images_per_task: int = DEFAULT_IMAGES_PER_TASK,
    masks: str = "rle",
    files: bool = False,
    instances: bool = False,
    panoptic: int | None = None,
):
    """``ds`` (rows {"path"} or {"image"}: an HxWx3 uint8 array) segmented by ``actors``
    actors (each with ``cpus_per_actor`` CPUs: torch runs as many threads), lazily: a
    :class:`ray.data.Dataset` of the rows :class:`SegmentActor` returns.
    ``vocabulary``: a Vocabulary, a list of names, or a comma-separated string. Generic
    reasoning is computed here once and shipped to the actors; Ray must be initialised
    (``ray.init()`` or :func:`openseg_r.distributed.connect`). ``instances`` adds each
    image's instances (COCO results format) to its row: a segmenter that finds them only.
    ``panoptic`` (the smallest segment's area) adds panoptic.png and panoptic.json to
    ``files``."""
    ray = require_ray()
    if masks not in ("rle", "array"):
        raise ConfigError(f"masks must be 'rle' or 'array', got {masks!r}")
    if not isinstance(actors, int) or actors < 1 or gpus_per_actor < 0 or images_per_task < 1:
        raise ConfigError("actors and images_per_task must be positive and gpus_per_actor 0 or more")
    checked_cpus_per_actor(cpus_per_actor)
    if instances and not options.kind.instances:
        raise ConfigError(
            f"instances need a segmenter that finds instances (sam3); the {options.segmenter} segmenter gives a "
            "label map only"
        )
    vocabulary, settings, generic = _prepare(vocabulary, options, settings)
    return ds.map_batches(
        SegmentActor,
        fn_constructor_kwargs={
            "options": options.model_dump(mode="json"),
            "settings": settings,
            "vocabulary": vocabulary.model_dump(mode="json"),
            "generic": generic,
            "masks": masks,
            "files": files,
            "instances": instances,
            "panoptic": panoptic,
            "threads": actor_threads(cpus_per_actor),
        },
        batch_size=images_per_task,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus_per_actor or None,
        num_cpus=cpus_per_actor,
    )


def segment_files_on_ray(
    paths: list[str],
    vocabulary,
    *,
    options: ModelOptions,
    settings=None,
    address: str | None = None,
    actors: int = 2,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = DEFAULT_CPUS_PER_ACTOR,
    images_per_task: int = DEFAULT_IMAGES_PER_TASK,
    instances: bool = False,
    panoptic: int | None = None,
) -> Iterator[dict]:
    """Each image file's row as it finishes, with its result folder's files ("files":
    {relative path: bytes}, instances.json too with ``instances``); the caller writes them
    (``openseg-r segment --engine ray``)."""
    ray = require_ray()
    connect(address)
    rows = [{"path": str(path)} for path in paths]
    if not rows:
        return
    blocks = max(1, -(-len(rows) // images_per_task))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    results = segment_dataset(
        ds,
        vocabulary,
        options=options,
        settings=settings,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        images_per_task=images_per_task,
        files=True,
        instances=instances,
        panoptic=panoptic,
    )
    for row in results.iter_rows():
        row = dict(row)
        row["files"] = {name: base64.b64decode(data) for name, data in json.loads(row["files"] or "{}").items()}
        yield row


def _prepare(vocabulary, options: ModelOptions, settings):
    """The vocabulary, the settings as a dict, and the generic reasoning the actors start with
    (computed here, with the options' LMM and cache, when the settings use reasoning)."""
    from openseg_r.errors import ReasoningUnavailableError
    from openseg_r.model import OpenSegR
    from openseg_r.nodes.generic_reasoning import cached_generic_entries, reason_generic_ahead
    from openseg_r.schemas import Vocabulary
    from openseg_r.vocab import parse_class_list

    if isinstance(vocabulary, str):
        vocabulary = parse_class_list(vocabulary)
    elif isinstance(vocabulary, (list, tuple)):
        vocabulary = parse_class_list(", ".join(vocabulary))
    elif not isinstance(vocabulary, Vocabulary):
        raise ConfigError(
            f"the vocabulary must be a Vocabulary, a list of names or a string, not {type(vocabulary).__name__}"
        )
    model = OpenSegR.from_options(options.with_overrides(device="cpu"), settings=settings)
    generic = []
    if model.settings.reasoning:
        context = model.context()
        try:
            reason_generic_ahead(vocabulary, context)
        except ReasoningUnavailableError:
            if not model.settings.allow_fallback:
                raise
        generic = cached_generic_entries(vocabulary, context)
    return vocabulary, model.settings.model_dump(mode="json"), generic
