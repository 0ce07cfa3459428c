"""Serving a local model over the OpenAI-compatible API, for ``openseg-r lmm serve``.

``transformers serve FOLDER`` serves a transformers model folder, but a GGUF file (what
most small local models ship as) cannot be saved as one directly: transformers loads a
GGUF model dequantised and then refuses ``save_pretrained``. :func:`servable_folder`
does the conversion once (the weights copied into a plain model of the same config, the
tokenizer saved beside them) into the user's cache, keyed by the file's size and time,
and later calls reuse it. :func:`serve_command` is the ``transformers serve`` command line.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from openseg_r.errors import ConfigError

SERVING_HINT = "serving needs transformers' serving extra: pip install 'transformers[serving]'"


def converted_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openseg-r" / "served-models"


def servable_folder(model: str | Path, root: Path | None = None) -> Path:
    """A folder ``transformers serve`` can load: ``model`` itself when it is a model folder,
    else the GGUF file converted (once) into ``root`` (default: the user cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a transformers model folder (it has no config.json)")
        return path.resolve()
    if not path.exists():
        raise ConfigError(f"model not found: {path}")
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise ConfigError(f"{path} is neither a .gguf file nor a transformers model folder")
    info = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = (root or converted_root()) / f"{path.stem}-{tag}"
    if (folder / "config.json").is_file():
        return folder
    _convert_gguf(path, folder)
    return folder


def _convert_gguf(path: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {path.name} for serving (once) into {folder}", file=sys.stderr, flush=True)
    partial = folder.with_name(folder.name + ".partial")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot read the GGUF model {path}: {str(exc).splitlines()[0][:300]}") from None
    plain = AutoModelForCausalLM.from_config(quantised.config)  # a GGUF-loaded model refuses to save itself
    plain.load_state_dict(quantised.state_dict())
    partial.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    os.replace(partial, folder)  # a half-written folder is never taken for a finished one


def serve_command(folder: Path, host: str, port: int, device: str | None) -> list[str]:
    """``transformers serve`` for ``folder``, as this Python runs it; one line if it cannot."""
    try:
        import fastapi  # noqa: F401 (what transformers serve needs beyond transformers)
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(SERVING_HINT) from None
    command = [
        sys.executable,
        "-c",
        "from transformers.cli.transformers import main; main()",
        "serve",
        str(folder),
        "--host",
        host,
        "--port",
        str(port),
    ]
    return command + (["--device", device] if device else [])
