"""The user's config file: ``$OPENSEG_R_CONFIG``, else ``~/.config/openseg-r/config.toml``.

Its tables: ``[lmm]`` (the spec and how it is called), ``[segmenter]`` (the kind and its
options) and ``[safety]`` (a server's limits). Flags and keyword arguments win over it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from openseg_r.errors import ConfigError


def config_file() -> Path:
    explicit = os.environ.get("OPENSEG_R_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "openseg-r" / "config.toml"


def read_config() -> dict:
    path = config_file()
    if not path.is_file():
        if os.environ.get("OPENSEG_R_CONFIG"):
            raise ConfigError(f"config file not found: {path}")
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
