"""Load an open_clip model, with one-line errors a user can act on.

``model`` is an open_clip model name (``ViT-B-16``), ``hf-hub:org/repo``,
``local-dir:/path`` (a folder with ``open_clip_config.json`` and weights), or a
path to an open_clip model-config JSON file (registered under its file stem).
``pretrained`` is a tag (``openai``), a local weights file, or None for random
weights (only useful for speed measurements and tests).

The weights are found before anything is built: a file is checked and read first; a
tag's file is taken from the Hugging Face cache when it is there, without asking the
hub. Only when it is not cached is a download tried, and only after a short check that
the hub answers, so an offline machine gets one line at once instead of a minute of
retries (:mod:`~openseg_r.segmenters.dense_clip.weights`). Files are always read with
``torch.load(weights_only=True)`` (or as safetensors): a checkpoint is data, never code
to run (:mod:`~openseg_r.segmenters.dense_clip.checkpoint`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from openseg_r.errors import ConfigError, WeightsError
from openseg_r.segmenters.dense_clip.checkpoint import fit_weights, read_state_dict
from openseg_r.segmenters.dense_clip.options import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, RANDOM_WEIGHTS
from openseg_r.segmenters.dense_clip.weights import (  # noqa: F401  (WEIGHT_SUFFIXES: the CLI's copy is tested against it)
    WEIGHT_SUFFIXES,
    find_weights,
    first_line,
    hub_model_files,
    looks_like_path,
    weights_in_folder,
)
from openseg_r.segmenters.devices import resolve_device, resolve_dtype

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class LoadedCLIP:
    model: torch.nn.Module
    tokenizer: object
    model_name: str
    pretrained: str | None
    device: torch.device
    dtype: torch.dtype
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def identity(self) -> str:
        """Identifies the weights, for cache keys."""
        return f"{self.model_name}|{self.pretrained}"


def pretrained_option(value: str | None) -> str | None:
    """A ``--clip-pretrained`` value: ``none`` or ``random`` (any case) means random weights."""
    if value is None or value.strip().lower() in RANDOM_WEIGHTS:
        return None
    return value


def load_clip(
    model: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    *,
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> LoadedCLIP:
    """Find and read the weights, create the model, load them and move it to the device, in eval mode."""
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    model_name = _register_config_file(model)
    if model_name.startswith("local-dir:"):
        pretrained = None
        folder = Path(model_name[len("local-dir:") :])
        weights_file = weights_in_folder(folder)
        state_dict = read_state_dict(weights_file)
        clip_model = _create_model(model_name, load_weights=False)
        tokenizer_name = model_name
    elif model_name.startswith("hf-hub:"):
        pretrained = None
        config_file, weights_file = hub_model_files(model_name[len("hf-hub:") :])
        state_dict = read_state_dict(weights_file)
        # Built from the cached snapshot folder, so that open_clip asks the hub for nothing more
        tokenizer_name = f"local-dir:{config_file.parent}"
        clip_model = _create_model(tokenizer_name, load_weights=False)
    else:
        if open_clip.get_model_config(model_name) is None:
            raise ConfigError(
                f"unknown CLIP model {model_name!r}; see open_clip.list_models(), or pass a config JSON file, "
                "'local-dir:PATH' or 'hf-hub:ORG/REPO'"
            )
        weights_file, tag_config = find_weights(model_name, pretrained)
        state_dict = None if weights_file is None else read_state_dict(weights_file)
        preprocess = {key: value for key, value in tag_config.items() if key != "size"}  # the tag's mean and std
        clip_model = _create_model(
            model_name,
            weights_follow=weights_file is not None,
            force_quick_gelu=bool(tag_config.get("quick_gelu", False)),
            force_preprocess_cfg=preprocess or None,
        )
        tokenizer_name = model_name
    if weights_file is not None:
        fit_weights(clip_model, state_dict, weights_file, model_name)
    clip_model.eval().requires_grad_(False)
    clip_model.to(device=torch_device, dtype=dtype)
    visual = clip_model.visual
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)
    try:
        tokenizer = open_clip.get_tokenizer(tokenizer_name)
    except Exception as exc:  # an hf-hub text tower whose tokenizer is not cached, and the like
        raise WeightsError(f"cannot load the tokenizer of {model_name!r}: {first_line(str(exc))}") from None
    return LoadedCLIP(clip_model, tokenizer, model_name, pretrained, torch_device, dtype, mean, std)


def needs_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Weights trained with QuickGELU (OpenAI's CLIP: ``ViT-B-16`` + ``openai``) must run
    with it; open_clip only warns when the model config says GELU, and the features then
    drift from the trained model's. The tag's own config says which."""
    if not pretrained or looks_like_path(pretrained):
        return False
    return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))


def _create_model(model_name: str, *, weights_follow: bool = True, **options) -> torch.nn.Module:
    """The architecture alone (random weights): the checkpoint is loaded by :func:`fit_weights`.
    open_clip then logs that the model was "initialized randomly", which is true only
    when no weights follow."""
    root = logging.getLogger()
    quiet = _NotRandomAfterAll() if weights_follow else None
    if quiet:
        root.addFilter(quiet)
    try:
        return open_clip.create_model(model_name, pretrained=None, device="cpu", pretrained_text=False, **options)
    except Exception as exc:
        raise WeightsError(f"cannot create CLIP model {model_name!r}: {first_line(str(exc))}") from None
    finally:
        if quiet:
            root.removeFilter(quiet)


class _NotRandomAfterAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")


def _register_config_file(model: str) -> str:
    import json

    if model.endswith(".json") and not model.startswith(("hf-hub:", "local-dir:")):
        path = Path(model)
        if not path.is_file():
            raise ConfigError(f"CLIP model config file not found: {path}")
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"CLIP model config is not valid JSON: {path} ({exc})") from None
        open_clip.add_model_config(path)
        return path.stem
    return model
