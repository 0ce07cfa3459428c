"""``KEY=VALUE`` flags (``--lmm-option``, ``--segmenter-option``), read one way."""

from __future__ import annotations

from openseg_r.errors import ConfigError, clipped


def key_value_pairs(pairs: list[str] | tuple[str, ...], flag: str, hint: str = "") -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}`` (a key given twice: the last wins); a
    pair without ``=`` or without a key is a one-line ConfigError naming ``flag``."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = str(pair).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes key=value, got {clipped(str(pair), 40)!r}{hint}")
        values[key.strip()] = value.strip()
    return values
