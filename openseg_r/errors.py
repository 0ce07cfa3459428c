"""Errors a user can act on.

Everything derived from :class:`OpenSegRError` is a problem with the user's input
or environment (bad image, bad vocabulary, missing weights). The CLI prints these
as one line and exits with code 2; anything else is an internal error (exit 1).
"""


class OpenSegRError(Exception):
    """Base class for errors caused by input or configuration, not by a bug."""


class ImageError(OpenSegRError):
    """The image is missing, unreadable, truncated, too large or of an unusable kind."""


class VocabularyError(OpenSegRError):
    """The vocabulary is empty, too large or otherwise unusable."""


class WeightsError(OpenSegRError):
    """CLIP weights are missing, unreachable or do not match the architecture."""


class ConfigError(OpenSegRError):
    """A setting or backend spec is invalid."""


class ReasoningUnavailableError(OpenSegRError):
    """Reasoning was asked for but the run got none at all (every LMM call failed, e.g. the
    LMM server is unreachable). ``result`` holds the bare-name result; ``unavailable`` is
    set when the backend itself could not be used. ``allow_fallback=True`` (the CLI's
    ``--allow-fallback``) returns that result instead of raising."""

    def __init__(self, message: str, result=None, unavailable: bool = False) -> None:
        super().__init__(message)
        self.result = result
        self.unavailable = unavailable


SHOWN_CHARS = 80  # the most of a caller's own input an error message repeats back
_UNION_TAGS = {"str", "int", "float", "bool", "bytes", "list", "dict", "tuple", "set", "none"}


def clipped(value, limit: int = SHOWN_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters (an ellipsis marks a cut), so an
    error never echoes a 100,000-character argument back in full."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def describe_validation_error(exc, limit: int = 5) -> str:
    """One line from a pydantic ValidationError: 'field: problem (got value); field: problem'.

    No documentation URL, no newline, no input longer than a few dozen characters, and
    one problem per field: the alternatives of a union are merged ('a valid list or a
    valid string'), and of several nested problems only the first is named."""
    by_field: dict[str, list[dict]] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(error.get("loc", ()))
        by_field.setdefault(str(loc[0]) if loc else "", []).append(error)
    parts = [_one_problem(errors) for errors in list(by_field.values())[:limit]]
    if len(by_field) > limit:
        parts.append(f"and {len(by_field) - limit} more")
    return clipped("; ".join(parts).replace("\n", " ").replace("\r", " "), 300)


def _one_problem(errors: list[dict]) -> str:
    """'where: message (got input)' for the errors of one top-level field."""
    located = [(_location(error.get("loc", ())), error) for error in errors]
    if len({where for where, _ in located}) > 1:  # nested problems: the deepest first one is the most specific
        deepest = max(len(error.get("loc", ())) for _, error in located)
        located = [next((where, error) for where, error in located if len(error.get("loc", ())) == deepest)]
    where, first = located[0]
    messages: list[str] = []
    for _, error in located:
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown name"
        if message not in messages:
            messages.append(message)
    text = _merged(messages)
    if where and first.get("type") not in ("missing", "extra_forbidden") and "input" in first:
        text += f" (got {_short_repr(first['input'])})"
    return f"{where}: {text}" if where else text


def _location(loc) -> str:
    """'vocabulary[0]' from ('vocabulary', 'list[str]', 0): union member tags dropped,
    each name clipped."""
    text = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif index and (part in _UNION_TAGS or "[" in part):
            continue
        else:
            text += ("." if text else "") + clipped(str(part), 40)
    return text


def _merged(messages: list[str]) -> str:
    prefix = "Input should be "
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m.removeprefix(prefix) for m in messages)
    return "; ".join(clipped(m, 120) for m in messages)


def _short_repr(value) -> str:
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = 30
    shortener.maxlist = shortener.maxdict = shortener.maxtuple = shortener.maxset = 3
    shortener.maxlevel = 2
    return clipped(shortener.repr(value), 40)
