"""Turn an LMM's raw text into a validated pydantic object, or say precisely why not."""

from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)

MAX_ANSWER_CHARS = 200_000
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class StructuredOutputError(ValueError):
    """The answer holds no JSON, or its JSON does not fit the schema."""


def extract_json(text: str) -> object:
    """Find the first JSON object or array in ``text`` (code fences and prose allowed)."""
    if not text or not text.strip():
        raise StructuredOutputError("the answer is empty")
    if len(text) > MAX_ANSWER_CHARS:
        raise StructuredOutputError(f"the answer is {len(text):,} characters, over the limit of {MAX_ANSWER_CHARS:,}")
    candidates = [match.group(1) for match in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        for start, char in enumerate(candidate):
            if char not in "{[":
                continue
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError:
                continue
            return value
    raise StructuredOutputError("the answer contains no JSON object")


def parse_structured(text: str, schema: type[T]) -> T:
    value = extract_json(text)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if not isinstance(value, dict):
        raise StructuredOutputError(f"expected a JSON object, got a JSON {type(value).__name__}")
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise StructuredOutputError(f"the JSON does not match the {schema.__name__} schema: {problems}") from None
