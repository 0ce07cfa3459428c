"""Turn an LMM's raw text into a validated pydantic object, or say precisely why not.

Accepted: a JSON object (alone, in a code fence, or surrounded by prose; a
one-element list holding it), and for class reasoning also the upstream
free-text "A1 … A2 … A3 … [attributes]" format. Anything else raises
:class:`StructuredOutputError` and nothing else, whatever the text.
"""

from __future__ import annotations

import json
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from openseg_r.lmm.upstream import parse_free_text
from openseg_r.schemas import ClassReasoning

T = TypeVar("T", bound=BaseModel)

MAX_ANSWER_CHARS = 200_000
MAX_JSON_STARTS = 200  # bounds the work spent on text full of stray braces
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


class StructuredOutputError(ValueError):
    """The answer holds no usable JSON, or its JSON does not fit the schema."""


def extract_json(text: str) -> object:
    """Find the first JSON object or array in ``text`` (code fences and prose allowed)."""
    if not isinstance(text, str) or not text.strip():
        raise StructuredOutputError("the answer is empty")
    if len(text) > MAX_ANSWER_CHARS:
        raise StructuredOutputError(f"the answer is {len(text):,} characters, over the limit of {MAX_ANSWER_CHARS:,}")
    candidates = [match.group(1) for match in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        starts = [i for i, char in enumerate(candidate) if char in "{["][:MAX_JSON_STARTS]
        for start in starts:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except (ValueError, RecursionError):
                continue
            return value
    raise StructuredOutputError("the answer contains no JSON object")


def parse_structured(text: str, schema: type[T], subject: str | None = None) -> T:
    """Parse and validate. ``subject`` names the class when the answer itself does not."""
    try:
        return _validate(extract_json(text), schema, subject)
    except StructuredOutputError as json_error:
        free = parse_free_text(text, subject) if schema is ClassReasoning else None
        if free is None:
            raise json_error
        return _validate(free, schema, subject)


def _validate(value: object, schema: type[T], subject: str | None) -> T:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
    if not isinstance(value, dict):
        raise StructuredOutputError(f"expected a JSON object, got a JSON {type(value).__name__}")
    if schema is ClassReasoning and subject and not value.get("name"):
        value = {**value, "name": subject}
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise StructuredOutputError(f"the JSON does not match the {schema.__name__} schema: {problems}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise StructuredOutputError(f"the JSON could not be validated: {type(exc).__name__}") from None
