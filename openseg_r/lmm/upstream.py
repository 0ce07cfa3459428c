"""The upstream OpenSeg-R formats: free-text answers and reasoning files.

Free text (generic reasoning, as Qwen2.5-VL answers the paper's prompt)::

    A1: This object belongs to [vehicle].
    A2: This 'vehicle' is [aircraft].
    A3: This 'aircraft' 'vehicle' can be recognized as aeroplane because it contains
        visual attributes: [wings, fuselage, tail assembly].

Files: generic reasoning is one JSON object keyed by class name, each value with
``raw_response``, ``general_category``, ``sub_category`` and ``class_des``;
image reasoning is one JSON file per image with
``reasoning.map_class_reason.<class>.reason3`` attribute lists.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from openseg_r.errors import ConfigError

_STEP = re.compile(r"A([123])\s*[:.)]\s*(.*?)(?=A[123]\s*[:.)]|\Z)", re.DOTALL | re.IGNORECASE)
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_RECOGNISED_AS = re.compile(r"recogni[sz]ed as\s+['\"]?(.+?)['\"]?\s+because", re.IGNORECASE | re.DOTALL)
MAX_FREE_TEXT = 20_000


def parse_free_text(text: str, subject: str | None = None) -> dict | None:
    """The A1/A2/A3 answer as a dict for :class:`ClassReasoning`, or None if it is not one."""
    if not isinstance(text, str) or len(text) > MAX_FREE_TEXT:
        return None
    steps = {match.group(1): match.group(2) for match in _STEP.finditer(text)}
    if "3" not in steps:
        return None
    attribute_groups = _BRACKETS.findall(steps["3"])
    if not attribute_groups:
        return None
    attributes = [part.strip().strip("'\"") for part in attribute_groups[-1].split(",")]
    name_match = _RECOGNISED_AS.search(steps["3"])
    name = subject or (name_match.group(1) if name_match else None)
    if not name:
        return None
    return {
        "name": name,
        "general_category": _first_bracket(steps.get("1", "")),
        "sub_category": _first_bracket(steps.get("2", "")),
        "attributes": [a for a in attributes if a],
    }


def _first_bracket(text: str) -> str:
    found = _BRACKETS.findall(text)
    return found[0].strip() if found else ""


def load_generic_file(path: str | Path) -> dict[str, dict]:
    """Read an upstream generic-reasoning file into ``{class: ClassReasoning fields}``."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: an upstream generic-reasoning file is a JSON object keyed by class name")
    out: dict[str, dict] = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            continue
        parsed = parse_free_text(entry.get("raw_response", ""), name) or {}
        out[name] = {
            "name": name,
            "general_category": entry.get("general_category") or parsed.get("general_category", ""),
            "sub_category": entry.get("sub_category") or parsed.get("sub_category", ""),
            "attributes": entry.get("class_des") or parsed.get("attributes", []),
            "raw_response": entry.get("raw_response"),
        }
    return out


def load_image_file(path: str | Path) -> dict:
    """Read an upstream per-image file into ImageReasoning fields."""
    data = _read_json(path)
    try:
        reasons = data["reasoning"]["map_class_reason"]
    except (KeyError, TypeError):
        raise ConfigError(f"{path}: no reasoning.map_class_reason in this upstream image file") from None
    if not isinstance(reasons, dict):
        raise ConfigError(f"{path}: reasoning.map_class_reason must be an object keyed by class")
    candidates = []
    for name, entry in reasons.items():
        entry = entry if isinstance(entry, dict) else {}
        candidates.append(
            {
                "name": str(name).split(",")[0].strip(),
                "general_category": _text(entry.get("reason1")),
                "sub_category": _text(entry.get("reason2")),
                "attributes": entry.get("reason3") or [],
            }
        )
    description = data.get("reasoning", {}).get("description") or data.get("description") or ""
    return {"description": description, "candidates": candidates}


def to_generic_file(reasoning: dict[str, dict]) -> dict[str, dict]:
    """ClassReasoning dicts -> the upstream generic format (with a synthesised raw_response)."""
    out = {}
    for name, value in reasoning.items():
        attributes = list(value.get("attributes", []))
        general, sub = value.get("general_category", ""), value.get("sub_category", "")
        raw = value.get("raw_response") or (
            f"A1: This object belongs to [{general}].\nA2: This '{general}' is [{sub}].\n"
            f"A3: This '{sub}' '{general}' can be recognized as {name} because it contains visual attributes: "
            f"[{', '.join(attributes)}]."
        )
        out[name] = {"raw_response": raw, "general_category": general, "sub_category": sub, "class_des": attributes}
    return out


def _text(value) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid JSON: {path} ({exc})") from None
