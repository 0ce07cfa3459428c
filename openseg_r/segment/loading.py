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
retries. Files are always read with ``torch.load(weights_only=True)`` (or as
safetensors): a checkpoint is data, never code to run.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from openseg_r.errors import ConfigError, WeightsError
from openseg_r.options import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, RANDOM_WEIGHTS

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
HUB_PROBE_TIMEOUT_S = 3.0  # how long the hub may take to answer before a download is given up
OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
# open_clip's names for the weights in a hub repository or a local-dir folder, preferred first
FOLDER_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                       "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                       "pytorch_model.bin", "pytorch_model.pth", "model.pth")


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Half precision on CUDA unless fp32 is asked for; fp32 on CPU (half is slow there).

    fp16 and bf16 cast the whole model (weights and activations), not ``torch.autocast``
    over float32 weights: autocast re-casts every weight on every forward pass (its cast
    cache only keeps weights that require grad), keeps the activations between the
    matmuls in float32 (twice the memory traffic for the layer norms, residual adds and
    GELU, a large share of a ViT-B's time at 197 tokens) and turns off PyTorch's fused
    multi-head-attention path. The cast loses little: the kernels still reduce in float32
    (matmul accumulation, layer-norm statistics, the attention softmax), the dense
    features are normalised in float32, and OpenAI's CLIP weights are themselves fp16, the
    precision NACLIP's reference runs them in on a GPU. ``benchmarks/bench_gpu.py --mode
    both`` measures the two side by side."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


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
        folder = Path(model_name[len("local-dir:"):])
        weights_file = _weights_in_folder(folder)
        state_dict = read_state_dict(weights_file)
        clip_model = _create_model(model_name, load_weights=False)
        tokenizer_name = model_name
    elif model_name.startswith("hf-hub:"):
        pretrained = None
        config_file, weights_file = _hub_model_files(model_name[len("hf-hub:"):])
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
        weights_file, tag_config = _weights_file(model_name, pretrained)
        state_dict = None if weights_file is None else read_state_dict(weights_file)
        preprocess = {key: value for key, value in tag_config.items() if key != "size"}  # the tag's mean and std
        clip_model = _create_model(model_name, weights_follow=weights_file is not None,
                                   force_quick_gelu=bool(tag_config.get("quick_gelu", False)),
                                   force_preprocess_cfg=preprocess or None)
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
        raise WeightsError(f"cannot load the tokenizer of {model_name!r}: {_first_line(str(exc))}") from None
    return LoadedCLIP(clip_model, tokenizer, model_name, pretrained, torch_device, dtype, mean, std)


def needs_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Weights trained with QuickGELU (OpenAI's CLIP: ``ViT-B-16`` + ``openai``) must run
    with it; open_clip only warns when the model config says GELU, and the features then
    drift from the trained model's. The tag's own config says which."""
    if not pretrained or looks_like_path(pretrained):
        return False
    return bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))


def looks_like_path(value: str) -> bool:
    """A ``pretrained`` value that names a file rather than a tag."""
    return os.sep in value or "/" in value or value.lower().endswith(WEIGHT_SUFFIXES)


# --------------------------------------------------------------------------- where the weights are


def _weights_file(model_name: str, pretrained: str | None) -> tuple[Path | None, dict]:
    """The local file that holds ``pretrained`` for a built-in model (None for random
    weights) and the tag's config ({} for a file); downloads only what is not cached."""
    if pretrained is None:
        return None, {}
    tag_config = open_clip.get_pretrained_cfg(model_name, pretrained)
    if tag_config:
        return _tag_file(model_name, pretrained, tag_config), tag_config
    path = Path(pretrained).expanduser()
    if path.is_dir():
        raise WeightsError(f"CLIP weights {pretrained} is a folder, not a weights file (an open_clip model folder "
                           f"is given as --clip-model local-dir:{pretrained})")
    if path.is_file():
        return path, {}
    if looks_like_path(pretrained):
        raise WeightsError(f"CLIP weights file not found: {pretrained}")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
    raise WeightsError(f"CLIP weights {pretrained!r} are neither a pretrained tag of {model_name} "
                       f"(tags: {tags}) nor a file")


def how_to_get_weights(model_name: str = "", tag_config: dict | None = None, *, offline: bool = False) -> str:
    """The advice in every "no weights here" error. A file of weights trained with
    QuickGELU (OpenAI's) needs the model's ``-quickgelu`` config: a file, unlike a tag,
    does not say so, and with GELU the features drift silently."""
    file = "--clip-pretrained FILE"
    quick = f"{model_name}-quickgelu"
    if (tag_config or {}).get("quick_gelu") and not model_name.endswith("-quickgelu") and \
            open_clip.get_model_config(quick) is not None:
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
        raise WeightsError(f"cannot download {what}: {_first_line(str(exc))}; {how_to_get_weights(*advice)}") from None


def _hub_model_files(repo: str) -> tuple[Path, Path]:
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
        raise WeightsError(f"cannot download {what}: {_first_line(str(exc))}; {how_to_get_weights()}") from None
    return config, weights


def _weights_in_folder(folder: Path) -> Path:
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
    return bool(constants.HF_HUB_OFFLINE) or any((flag or "").strip().upper() in ("1", "ON", "YES", "TRUE")
                                                 for flag in flags)


def _refuse_if_no_hub(what: str, where: str, url: str, advice: tuple[str, dict]) -> None:
    """Raise one line when nothing may or can be downloaded: offline mode, or a hub that
    does not answer within :data:`HUB_PROBE_TIMEOUT_S` (instead of a minute of retries)."""
    if _hub_offline():
        raise WeightsError(f"{what} are not in {where} and HF_HUB_OFFLINE is set: "
                           f"{how_to_get_weights(*advice, offline=True)}")
    problem = unreachable(url, HUB_PROBE_TIMEOUT_S)
    if problem:
        raise WeightsError(f"{what} are not in {where} and cannot be downloaded ({problem}): "
                           f"{how_to_get_weights(*advice)}")


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


# --------------------------------------------------------------------------- reading and fitting


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
            raise WeightsError(f"cannot read CLIP weights {path}: a damaged safetensors file "
                               f"({_first_line(str(exc))})") from None
    if not head.startswith(b"PK") and _is_text(head):
        raise WeightsError(f"CLIP weights file {path} is a text file, not weights (a model config JSON is given "
                           "as --clip-model)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns before it refuses a TorchScript archive
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise WeightsError(
                f"CLIP weights file {path} holds Python objects besides tensors ({found.group(1)}), which are never "
                "unpickled: save only the tensors, torch.save(model.state_dict(), FILE)") from None
        raise WeightsError(f"cannot read CLIP weights {path}: not a PyTorch checkpoint or a safetensors file, "
                           "or a damaged one") from None
    except RuntimeError as exc:
        text = str(exc)
        if "TorchScript" in text:
            raise WeightsError(
                f"CLIP weights file {path} is a TorchScript archive (like OpenAI's original .pt files), which is "
                "not loaded: use open_clip's weights from the Hugging Face hub (README, Models)") from None
        if "zip" in text or "PytorchStreamReader" in text:
            raise WeightsError(f"cannot read CLIP weights {path}: the file is damaged or incomplete (copy or "
                               "download it again)") from None
        raise WeightsError(f"cannot read CLIP weights {path}: not a PyTorch checkpoint or a safetensors file, "
                           "or a damaged one") from None
    except Exception:  # EOFError, KeyError, ... from bytes that are not a checkpoint
        raise WeightsError(f"cannot read CLIP weights {path}: not a PyTorch checkpoint or a safetensors file, "
                           "or a damaged one") from None
    return _as_state_dict(loaded, path)


def fit_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    """Load ``state_dict`` into ``model`` after open_clip's own key conversions; weights
    of another architecture are refused with the first keys that do not fit."""
    if Path(path).suffix in (".npz", ".npy"):
        try:
            open_clip.load_checkpoint(model, str(path))
        except Exception as exc:
            raise WeightsError(f"cannot load CLIP weights {path} into {model_name}: {_first_line(str(exc))}") from None
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
            shapes = [f"{key} {list(state_dict[key].shape)} here, {list(expected[key].shape)} in the model"
                      for key in reshaped[:3]]
            parts.append(f"{_count(reshaped, 'tensor')} of another shape ({'; '.join(shapes)}"
                         f"{', ...' if len(reshaped) > 3 else ''})")
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
        raise WeightsError(f"CLIP weights file {path} holds {_describe(loaded)}, not a state_dict (parameter names "
                           f"mapped to tensors): {advice}")
    if not loaded:
        raise WeightsError(f"CLIP weights file {path} holds an empty state_dict")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"CLIP weights file {path} is not a state_dict: {str(key)[:80]!r} holds "
                               f"{_describe(value)}, not a tensor: {advice}")
    if all(key.startswith("module.") for key in loaded):  # saved from a DistributedDataParallel wrapper
        return {key[len("module."):]: value for key, value in loaded.items()}
    return dict(loaded)


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
        raise WeightsError(f"cannot create CLIP model {model_name!r}: {_first_line(str(exc))}") from None
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


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"
