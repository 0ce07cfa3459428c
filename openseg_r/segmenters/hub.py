"""A transformers model folder from a hub id or a local path, with one-line errors before
any model is built: missing, gated or forbidden, corrupt, or another architecture. SAM 3
and ProxyCLIP's vision foundation models load through it.

Gated weights (``facebook/sam3``): accept the licence on the model's page, then give a
token (``HF_TOKEN``, or ``hf auth login``); or download the folder once and pass its path.
With ``HF_HUB_OFFLINE=1`` only the local cache is read. Only safetensors weights are read:
pickles can run code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from openseg_r.errors import WeightsError, clipped

NEEDED = ("config.json",)
ALLOWED_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]  # never pickles: weights are data


@dataclass(frozen=True)
class ModelFiles:
    folder: Path
    identity: str  # what the weights are: the hub id at its commit, or the folder with its weights' size and time
    model_type: str  # what its config.json says


def locate(model: str, revision: str | None, *, what: str, model_types: tuple[str, ...]) -> ModelFiles:
    """The model's folder, downloaded (or read from the cache) for a hub id, checked to be
    one of ``model_types``; ``what`` names the model in errors ("SAM 3")."""
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        folder = path
        identity = f"{path.resolve()}|{_weights_stamp(path)}"
    elif model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise WeightsError(f"{what} model folder not found: {model}")
    else:
        folder = _download(model, revision)
        identity = f"{model}@{folder.name}"
    model_type = check_folder(folder, model, what=what, model_types=model_types)
    return ModelFiles(folder, identity, model_type)


def _download(repo: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=ALLOWED_FILES, local_files_only=offline))
    except GatedRepoError:
        raise WeightsError(
            f"{repo} is gated on the Hugging Face hub: accept its licence at https://huggingface.co/{repo}, then "
            "set HF_TOKEN (or pass a local model folder)"
        ) from None
    except RevisionNotFoundError:
        raise WeightsError(f"{repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise WeightsError(f"no model {repo!r} on the Hugging Face hub that this token can see") from None
    except LocalEntryNotFoundError:
        raise WeightsError(
            f"{repo} is not in the Hugging Face cache and the hub cannot be reached"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: download it on a machine with network, or pass a local "
            "model folder"
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightsError(f"the Hugging Face hub refused {repo} ({status}): check HF_TOKEN") from None
        raise WeightsError(f"cannot download {repo}: {clipped(str(exc).splitlines()[0], 200)}") from None


def check_folder(folder: Path, model: str, *, what: str, model_types: tuple[str, ...]) -> str:
    """A model folder whose config names one of ``model_types`` (returned) and whose weights
    are readable safetensors."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"{model} has no config.json: not a transformers model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{config_file} is not valid JSON ({clipped(str(exc), 80)})") from None
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in model_types:
        raise WeightsError(
            f"{model} is a {kind or 'unknown'} model, not {what} (its config.json says model_type {kind!r})"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise WeightsError(f"{model} has no .safetensors weights (pickled weights are not read: they can run code)")
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # noqa: BLE001 (any unreadable header is the same answer)
            raise WeightsError(f"{file} is not a readable safetensors file ({clipped(str(exc), 120)})") from None
    return kind


def _weights_stamp(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors"))
    return ",".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files)
