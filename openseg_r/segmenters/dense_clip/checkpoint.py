"""Reading a weights file and fitting it to a model, with one-line errors.

Files are always read with ``torch.load(weights_only=True)`` (or as safetensors): a
checkpoint is data, never code to run. open_clip's own key conversions are applied
before the keys are compared, so weights of another architecture are refused with the
first keys that do not fit instead of a cut-off ``load_state_dict`` message.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import open_clip
import torch

from openseg_r.errors import WeightsError
from openseg_r.segmenters.dense_clip.weights import first_line


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors by name; every way it can fail is one line, and nothing in
    it is ever run (``weights_only=True``). ``.npz`` files (big_vision) are read by open_clip."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"CLIP weights file not found: {path}")
    if path.suffix in (".npz", ".npy"):
        return {}
    with open(path, "rb") as file:
        head = file.read(512)
    if not head:
        raise WeightsError(f"CLIP weights file {path} is empty")
    if _is_safetensors(head):
        from safetensors.torch import load_file

        try:
            return _as_state_dict(load_file(str(path), device="cpu"), path)
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(
                f"cannot read CLIP weights {path}: a damaged safetensors file ({first_line(str(exc))})"
            ) from None
    if not head.startswith(b"PK") and _is_text(head):
        raise WeightsError(
            f"CLIP weights file {path} is a text file, not weights (a model config JSON is given as --clip-model)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns before it refuses a TorchScript archive
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise WeightsError(
                f"CLIP weights file {path} holds Python objects besides tensors ({found.group(1)}), which are never "
                "unpickled: save only the tensors, torch.save(model.state_dict(), FILE)"
            ) from None
        raise WeightsError(
            f"cannot read CLIP weights {path}: not a PyTorch checkpoint or a safetensors file, or a damaged one"
        ) from None
    except RuntimeError as exc:
        text = str(exc)
        if "TorchScript" in text:
            raise WeightsError(
                f"CLIP weights file {path} is a TorchScript archive (like OpenAI's original .pt files), which is "
                "not loaded: use open_clip's weights from the Hugging Face hub (README, Models)"
            ) from None
        if "zip" in text or "PytorchStreamReader" in text:
            raise WeightsError(
                f"cannot read CLIP weights {path}: the file is damaged or incomplete (copy or download it again)"
            ) from None
        raise WeightsError(
            f"cannot read CLIP weights {path}: not a PyTorch checkpoint or a safetensors file, or a damaged one"
        ) from None
    except Exception:  # EOFError, KeyError, ... from bytes that are not a checkpoint
        raise WeightsError(
            f"cannot read CLIP weights {path}: not a PyTorch checkpoint or a safetensors file, or a damaged one"
        ) from None
    return _as_state_dict(loaded, path)


def fit_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    """Load ``state_dict`` into ``model`` after open_clip's own key conversions; weights
    of another architecture are refused with the first keys that do not fit."""
    if Path(path).suffix in (".npz", ".npy"):
        try:
            open_clip.load_checkpoint(model, str(path))
        except Exception as exc:
            raise WeightsError(f"cannot load CLIP weights {path} into {model_name}: {first_line(str(exc))}") from None
        return
    try:
        state_dict = _open_clip_conversions(model, dict(state_dict))
    except Exception:  # a conversion that meets another architecture's keys: compare them as they are
        state_dict = dict(state_dict)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [key for key in expected if key in state_dict and state_dict[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"{_count(missing, 'missing key')} ({_first_few(missing)})")
        if unexpected:
            parts.append(f"{_count(unexpected, 'unexpected key')} ({_first_few(unexpected)})")
        if reshaped:
            shapes = [
                f"{key} {list(state_dict[key].shape)} here, {list(expected[key].shape)} in the model"
                for key in reshaped[:3]
            ]
            parts.append(
                f"{_count(reshaped, 'tensor')} of another shape ({'; '.join(shapes)}"
                f"{', ...' if len(reshaped) > 3 else ''})"
            )
        raise WeightsError(f"the weights in {path} do not fit {model_name}: {', '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)


def _open_clip_conversions(model: torch.nn.Module, state_dict: dict) -> dict:
    """What ``open_clip.load_checkpoint`` (3.x) does to a state_dict before loading it:
    third-party layouts, the old text-tower layout, scalar/1-d logit parameters and
    position embeddings of another length."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for name in ("logit_scale", "logit_bias"):
        parameter = getattr(model, name, None)
        if name in state_dict and parameter is not None and parameter.ndim != state_dict[name].ndim:
            state_dict[name] = state_dict[name].reshape(parameter.shape)
    wants_bias = getattr(model, "logit_bias", None) is not None
    if wants_bias and "logit_bias" not in state_dict and "logit_scale" in state_dict:
        state_dict["logit_bias"] = torch.zeros_like(state_dict["logit_scale"])
    position_id_key = "text.transformer.embeddings.position_ids"
    if position_id_key in state_dict and not hasattr(model, position_id_key):
        del state_dict[position_id_key]
    resize_pos_embed(state_dict, model)
    resize_text_pos_embed(state_dict, model)
    return state_dict


def _as_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict (or of a training checkpoint's ``state_dict`` entry)."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    advice = "save one with torch.save(model.state_dict(), FILE)"
    if not isinstance(loaded, Mapping):
        raise WeightsError(
            f"CLIP weights file {path} holds {_describe(loaded)}, not a state_dict (parameter names "
            f"mapped to tensors): {advice}"
        )
    if not loaded:
        raise WeightsError(f"CLIP weights file {path} holds an empty state_dict")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"CLIP weights file {path} is not a state_dict: {str(key)[:80]!r} holds "
                f"{_describe(value)}, not a tensor: {advice}"
            )
    if all(key.startswith("module.") for key in loaded):  # saved from a DistributedDataParallel wrapper
        return {key[len("module.") :]: value for key, value in loaded.items()}
    return dict(loaded)


def _is_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return len(head) > 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _count(keys: list[str], noun: str) -> str:
    return f"{len(keys)} {noun}{'' if len(keys) == 1 else 's'}"


def _first_few(keys: list[str], few: int = 3) -> str:
    return ", ".join(keys[:few]) + (", ..." if len(keys) > few else "")
