"""Load an open_clip model the open_clip way, with errors a user can act on.

``model`` is an open_clip model name (``ViT-B-16``), ``hf-hub:org/repo``,
``local-dir:/path`` (a folder with ``open_clip_config.json`` and weights), or a
path to an open_clip model-config JSON file (registered under its file stem).
``pretrained`` is a tag (``openai``), a local weights file, or None for random
weights (only useful for speed measurements and tests).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from openseg_r.errors import ConfigError, WeightsError
from openseg_r.options import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, RANDOM_WEIGHTS

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


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
    """Create the model, load its weights and move it to the device, in eval mode."""
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    model_name = _register_config_file(model)
    is_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if is_schema:
        pretrained = None
    if model_name.startswith("local-dir:") and not Path(model_name[len("local-dir:"):]).is_dir():
        raise WeightsError(f"model folder not found: {model_name[len('local-dir:'):]}")
    if not is_schema and open_clip.get_model_config(model_name) is None:
        raise ConfigError(
            f"unknown CLIP model {model_name!r}; see open_clip.list_models(), or pass a config JSON file, "
            "'local-dir:PATH' or 'hf-hub:ORG/REPO'"
        )
    if pretrained and _looks_like_path(pretrained) and not os.path.isfile(pretrained):
        raise WeightsError(f"CLIP weights file not found: {pretrained}")
    try:
        clip_model = open_clip.create_model(model_name, pretrained=pretrained or None, device="cpu",
                                            force_quick_gelu=needs_quick_gelu(model_name, pretrained))
    except RuntimeError as exc:
        text = str(exc)
        if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
            raise WeightsError(
                f"the weights {pretrained or model_name!r} do not match the architecture {model_name!r}: "
                f"{_first_line(text)}"
            ) from None
        hint = (" (no network here? pass a local weights file with --clip-pretrained FILE)"
                if "download" in text.lower() else "")
        raise WeightsError(
            f"cannot load CLIP weights {pretrained or model_name!r}{hint}: {_first_line(text)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"cannot load CLIP weights {pretrained or model_name!r} (no network to download them here?): "
            f"{_first_line(str(exc))}"
        ) from None
    except Exception as exc:  # unpickling errors and the like from a corrupt file
        raise WeightsError(
            f"cannot read CLIP weights {pretrained or model_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    clip_model.eval().requires_grad_(False)
    clip_model.to(device=torch_device, dtype=dtype)
    visual = clip_model.visual
    mean = tuple(getattr(visual, "image_mean", None) or OPENAI_MEAN)
    std = tuple(getattr(visual, "image_std", None) or OPENAI_STD)
    tokenizer = open_clip.get_tokenizer(model_name)
    return LoadedCLIP(clip_model, tokenizer, model_name, pretrained, torch_device, dtype, mean, std)


def needs_quick_gelu(model_name: str, pretrained: str | None) -> bool:
    """Weights trained with QuickGELU (OpenAI's CLIP: ``ViT-B-16`` + ``openai``) must run
    with it; open_clip only warns when the model config says GELU, and the features then
    drift from the trained model's. The tag's own config says which."""
    if not pretrained or _looks_like_path(pretrained):
        return False
    from open_clip.pretrained import get_pretrained_cfg

    return bool(get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))


def _register_config_file(model: str) -> str:
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


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz"))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:600] if text.strip() else "unknown error"
