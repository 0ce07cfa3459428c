"""Where a model's weights are: a file, a tag's file in the Hugging Face cache, or a
download, tried only after a short check that the hub answers.

Every "no weights here" error is one line that says where it looked and how to point at
local weights, so an offline machine gets one line at once instead of a minute of retries.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import open_clip

from openseg_r.errors import WeightsError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
HUB_PROBE_TIMEOUT_S = 3.0  # how long the hub may take to answer before a download is given up
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
# open_clip's names for the weights in a hub repository or a local-dir folder, preferred first
FOLDER_WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)


def looks_like_path(value: str) -> bool:
    """A ``pretrained`` value that names a file rather than a tag."""
    return os.sep in value or "/" in value or value.lower().endswith(WEIGHT_SUFFIXES)


def find_weights(model_name: str, pretrained: str | None) -> tuple[Path | None, dict]:
    """The local file that holds ``pretrained`` for a built-in model (None for random
    weights) and the tag's config ({} for a file); downloads only what is not cached."""
    if pretrained is None:
        return None, {}
    tag_config = open_clip.get_pretrained_cfg(model_name, pretrained)
    if tag_config:
        return _tag_file(model_name, pretrained, tag_config), tag_config
    path = Path(pretrained).expanduser()
    if path.is_dir():
        raise WeightsError(
            f"CLIP weights {pretrained} is a folder, not a weights file (an open_clip model folder "
            f"is given as --clip-model local-dir:{pretrained})"
        )
    if path.is_file():
        return path, {}
    if looks_like_path(pretrained):
        raise WeightsError(f"CLIP weights file not found: {pretrained}")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
    raise WeightsError(
        f"CLIP weights {pretrained!r} are neither a pretrained tag of {model_name} (tags: {tags}) nor a file"
    )


def how_to_get_weights(model_name: str = "", tag_config: dict | None = None, *, offline: bool = False) -> str:
    """The advice in every "no weights here" error. A file of weights trained with
    QuickGELU (OpenAI's) needs the model's ``-quickgelu`` config: a file, unlike a tag,
    does not say so, and with GELU the features drift silently."""
    file = "--clip-pretrained FILE"
    quick = f"{model_name}-quickgelu"
    if (
        (tag_config or {}).get("quick_gelu")
        and not model_name.endswith("-quickgelu")
        and open_clip.get_model_config(quick) is not None
    ):
        file += f" (with --clip-model {quick}: these weights run with QuickGELU)"
    cache = "copy the Hugging Face cache from a machine with network" + ("" if offline else " and set HF_HUB_OFFLINE=1")
    return f"pass a weights file with {file}, or {cache} (README, Models)"


def _tag_file(model_name: str, tag: str, tag_config: dict) -> Path:
    what = f"CLIP weights {tag!r} of {model_name}"
    advice = (model_name, tag_config)
    if tag_config.get("file"):
        if not os.path.isfile(tag_config["file"]):
            raise WeightsError(f"{what}: file not found: {tag_config['file']}")
        return Path(tag_config["file"])
    hub = tag_config.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        names = _hub_weight_names(filename or "open_clip_pytorch_model.bin")
        cached = _cached_hub_file(repo, names)
        if cached is not None:
            return cached
        _refuse_if_no_hub(what, f"the Hugging Face cache ({_hub_cache_dir()}, repo {repo})", _hub_endpoint(), advice)
    else:
        url = tag_config.get("url", "")
        cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)  # open_clip's folder for URLs
        if url and cached.is_file():
            return cached
        _refuse_if_no_hub(what, f"open_clip's download folder ({cached})", url, advice)
    try:
        return Path(open_clip.download_pretrained(tag_config))
    except Exception as exc:
        raise WeightsError(f"cannot download {what}: {first_line(str(exc))}; {how_to_get_weights(*advice)}") from None


def hub_model_files(repo: str) -> tuple[Path, Path]:
    """The config and weights of an ``hf-hub:`` model, from the cache or downloaded."""
    config = _cached_hub_file(repo, (OPEN_CLIP_CONFIG_NAME,))
    names = _hub_weight_names("open_clip_pytorch_model.bin")
    weights = _cached_hub_file(repo, names)
    if config is not None and weights is not None:
        return config, weights
    what = f"CLIP weights of hf-hub:{repo}"
    _refuse_if_no_hub(what, f"the Hugging Face cache ({_hub_cache_dir()}, repo {repo})", _hub_endpoint(), ("", {}))
    try:
        from huggingface_hub import hf_hub_download

        config = Path(hf_hub_download(repo, OPEN_CLIP_CONFIG_NAME))
        weights = Path(open_clip.pretrained.download_pretrained_from_hf(repo))
    except Exception as exc:
        raise WeightsError(f"cannot download {what}: {first_line(str(exc))}; {how_to_get_weights()}") from None
    return config, weights


def weights_in_folder(folder: Path) -> Path:
    """The weights file of a ``local-dir:`` folder, chosen as open_clip chooses it."""
    if not folder.is_dir():
        raise WeightsError(f"model folder not found: {folder}")
    if not (folder / OPEN_CLIP_CONFIG_NAME).is_file():
        raise WeightsError(f"model folder {folder} has no {OPEN_CLIP_CONFIG_NAME}")
    for name in FOLDER_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
    if not found:
        raise WeightsError(f"model folder {folder} has no weights file ({', '.join(FOLDER_WEIGHT_NAMES[:3])}, ...)")
    return found[0]


def _hub_weight_names(filename: str) -> tuple[str, ...]:
    """The names open_clip tries in a hub repository, in its order: safetensors first."""
    if filename == "open_clip_pytorch_model.bin":
        return "open_clip_model.safetensors", filename
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


def _cached_hub_file(repo: str, names: tuple[str, ...]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        try:
            found = try_to_load_from_cache(repo, name)
        except Exception:  # a repo id the hub would refuse: there is nothing cached under it
            return None
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(
        (flag or "").strip().upper() in ("1", "ON", "YES", "TRUE") for flag in flags
    )


def _refuse_if_no_hub(what: str, where: str, url: str, advice: tuple[str, dict]) -> None:
    """Raise one line when nothing may or can be downloaded: offline mode, or a hub that
    does not answer within :data:`HUB_PROBE_TIMEOUT_S` (instead of a minute of retries)."""
    if _hub_offline():
        raise WeightsError(
            f"{what} are not in {where} and HF_HUB_OFFLINE is set: {how_to_get_weights(*advice, offline=True)}"
        )
    problem = unreachable(url, HUB_PROBE_TIMEOUT_S)
    if problem:
        raise WeightsError(
            f"{what} are not in {where} and cannot be downloaded ({problem}): {how_to_get_weights(*advice)}"
        )


def unreachable(url: str, timeout: float) -> str | None:
    """Why ``url``'s server cannot be reached, or None when it answers (any HTTP status,
    or a TLS problem the real download will report). Proxies from the environment apply.
    Name resolution is bounded too: the request runs in a thread that is waited for."""
    outcome: list[str | None] = []

    def probe() -> None:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except urllib.error.URLError as exc:
            reason = exc.reason
            outcome.append(None if "SSL" in type(reason).__name__ else f"{url} is not reachable: {reason}")
        except (TimeoutError, OSError) as exc:
            outcome.append(f"{url} is not reachable: {exc or type(exc).__name__}")
        except ValueError as exc:  # not a URL at all
            outcome.append(f"{url!r} is not a usable address: {exc}")

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return f"{url} did not answer within {timeout:g} s"
    return outcome[0]


def first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"
