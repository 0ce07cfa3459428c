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


def describe_validation_error(exc) -> str:
    """One line from a pydantic ValidationError: 'field: problem; field: problem'."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}" for error in exc.errors()[:5]
    )
