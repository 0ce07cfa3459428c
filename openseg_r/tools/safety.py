"""Limits on what an agent may ask for: one configuration for the LangChain tool, the
MCP server and the LangGraph server.

Everything an agent sends is untrusted. Images come from a file under a configured
root, from base64 bytes, or (only when enabled) from a public http(s) URL; sizes are
checked before anything is decoded; vocabularies are capped. Every refusal is a
:class:`ToolInputError` with a message written for the agent that sent the call.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import socket
import stat
import tomllib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openseg_r.errors import ConfigError, OpenSegRError, describe_validation_error
from openseg_r.state import Vocabulary
from openseg_r.vocab import BUILTIN_FILES, load_builtin, parse_class_list

MAX_REDIRECTS = 3


class ToolInputError(OpenSegRError):
    """An agent's argument was refused; the message says why and what is allowed."""


class SafetyLimits(BaseModel):
    """The limits (config file section ``[safety]``; the ``serve`` options override it)."""

    model_config = ConfigDict(extra="forbid")

    allowed_roots: list[Path] = Field(default_factory=list)  # none: image paths are refused
    max_file_bytes: int = Field(50_000_000, ge=1)
    max_base64_chars: int = Field(27_000_000, ge=4)  # about 20 MB of image bytes
    max_request_bytes: int = Field(64_000_000, ge=1_000_000)  # HTTP bodies over this are refused unread (413)
    max_pixels: int = Field(25_000_000, ge=64)
    allow_urls: bool = False
    url_max_bytes: int = Field(20_000_000, ge=1)
    url_timeout_s: float = Field(10.0, gt=0, le=300)
    max_classes: int = Field(1000, ge=1, le=5000)
    max_name_chars: int = Field(100, ge=1, le=200)
    call_timeout_s: float = Field(300.0, gt=0)  # per segmentation call
    max_concurrent: int = Field(2, ge=1, le=64)  # segmentations at once; the rest wait in a queue
    queue_timeout_s: float = Field(30.0, ge=0)  # how long a call may wait for a free slot before it is refused

    @classmethod
    def from_config(cls, data: dict | None = None, **overrides) -> "SafetyLimits":
        """The ``[safety]`` table of the config file (see ``openseg_r.lmm.spec.config_file``),
        with explicit overrides (None values are ignored)."""
        if data is None:
            from openseg_r.lmm.spec import read_config

            data = read_config().get("safety", {})
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(f"invalid [safety] setting: {describe_validation_error(exc)}") from None

    def resolved_roots(self) -> list[Path]:
        return [Path(os.path.expanduser(root)).resolve() for root in self.allowed_roots]


# --------------------------------------------------------------------------- images


def read_image_path(value: str, limits: SafetyLimits) -> bytes:
    """The bytes of a regular file under an allowed root (symlinks resolved first)."""
    roots = limits.resolved_roots()
    if not roots:
        raise ToolInputError("reading image files is disabled on this server; send the image as base64 instead")
    if "\x00" in value or not value.strip():
        raise ToolInputError("the image path is empty or contains a NUL character")
    given = Path(os.path.expanduser(value.strip()))
    if ".." in given.parts:
        raise ToolInputError("the image path must not contain '..'")
    candidate = given if given.is_absolute() else roots[0] / given
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise ToolInputError(f"no such image file: {value}") from None
    except (OSError, RuntimeError):  # symlink loops, permissions
        raise ToolInputError(f"the image path cannot be resolved: {value}") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ToolInputError(f"the image path is outside the allowed folders ({', '.join(map(str, roots))})")
    try:
        info = resolved.stat()
    except OSError:
        raise ToolInputError(f"the image file cannot be read: {value}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ToolInputError(f"not a regular file (a directory, device or pipe): {value}")
    if info.st_size > limits.max_file_bytes:
        raise ToolInputError(f"the image file is {info.st_size:,} bytes, over the limit of {limits.max_file_bytes:,}")
    try:
        with resolved.open("rb") as handle:
            data = handle.read(limits.max_file_bytes + 1)
    except OSError:
        raise ToolInputError(f"the image file cannot be read: {value}") from None
    if len(data) > limits.max_file_bytes:  # grew while we looked
        raise ToolInputError(f"the image file is over the limit of {limits.max_file_bytes:,} bytes")
    return data


def decode_base64_image(value: str, limits: SafetyLimits) -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URL), length-checked before decoding."""
    if len(value) > limits.max_base64_chars:
        raise ToolInputError(
            f"the base64 image is {len(value):,} characters, over the limit of {limits.max_base64_chars:,}"
        )
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ToolInputError("a data URL image must be base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ToolInputError("image_base64 is not valid base64") from None


def fetch_image_url(url: str, limits: SafetyLimits) -> bytes:
    """GET a public http(s) URL: only when enabled, with a size cap and a timeout. Each
    hop's host must resolve only to public addresses, and the connection goes to the
    address that was checked (no second DNS lookup to rebind)."""
    if not limits.allow_urls:
        raise ToolInputError("fetching images from URLs is disabled on this server; send a file path or base64")
    import httpx

    for _ in range(MAX_REDIRECTS + 1):
        parts, address = _checked_url(url)
        pinned = urlunsplit(parts._replace(netloc=_netloc(address, parts.port)))
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "Accept": "image/*"}
        try:
            with httpx.Client(timeout=limits.url_timeout_s, follow_redirects=False, trust_env=False) as client:
                with client.stream("GET", pinned, headers=headers,
                                   extensions={"sni_hostname": parts.hostname}) as response:
                    if response.is_redirect:  # each hop is checked again
                        url = str(httpx.URL(url).join(response.headers.get("location", "")))
                        continue
                    if response.status_code != 200:
                        raise ToolInputError(f"the image URL answered HTTP {response.status_code}")
                    return _read_capped(response, limits.url_max_bytes)
        except httpx.TimeoutException:
            raise ToolInputError(f"the image URL did not answer within {limits.url_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise ToolInputError(f"the image URL could not be fetched: {type(exc).__name__}") from None
    raise ToolInputError(f"the image URL redirected more than {MAX_REDIRECTS} times")


def _checked_url(url: str):
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ToolInputError("the image URL is malformed") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolInputError("only http and https image URLs are allowed")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise ToolInputError(f"the image URL's host cannot be resolved: {parts.hostname}") from None
    addresses = {info[4][0] for info in infos}
    for address in addresses:
        if not is_public_address(address):
            raise ToolInputError(
                f"the image URL's host resolves to a non-public address ({address}); "
                "loopback, link-local and private addresses are refused"
            )
    return parts, sorted(addresses)[0]


def is_public_address(address: str) -> bool:
    """False for loopback, link-local, private, reserved, multicast and unspecified addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def _netloc(address: str, port: int | None) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host


def _read_capped(response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ToolInputError(f"the image URL's content is {int(declared):,} bytes, over the limit of {limit:,}")
    chunks, total = [], 0
    for chunk in response.iter_bytes():
        total += len(chunk)
        if total > limit:
            raise ToolInputError(f"the image URL's content is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- vocabulary


def checked_vocabulary(value: str | list[str], limits: SafetyLimits) -> Vocabulary:
    """A built-in vocabulary name, a comma-separated string or a list of names; never a file."""
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        if key in BUILTIN_FILES:
            vocabulary = load_builtin(key)
            _check_size(len(vocabulary.classes), limits)
            return vocabulary
        if len(value) > limits.max_classes * (limits.max_name_chars + 1):
            raise ToolInputError(f"the vocabulary text is {len(value):,} characters, far over the limits")
        items = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise ToolInputError("vocabulary must be a list of class names or a vocabulary name")
    _check_size(len(items), limits)
    for item in items:
        if not isinstance(item, str):
            raise ToolInputError("every class name must be a string")
        if len(item.strip()) > limits.max_name_chars:
            raise ToolInputError(f"a class name is {len(item.strip())} characters, "
                                 f"over the limit of {limits.max_name_chars}")
    try:
        return parse_class_list(items)
    except OpenSegRError as exc:
        raise ToolInputError(str(exc)) from None


def _check_size(count: int, limits: SafetyLimits) -> None:
    if count > limits.max_classes:
        raise ToolInputError(f"the vocabulary has {count:,} classes, over the limit of {limits.max_classes:,}")


def load_safety_file(path: str | Path) -> dict:
    """A standalone TOML file with a ``[safety]`` table (for ``serve --safety-config``)."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8")).get("safety", {})
    except FileNotFoundError:
        raise ConfigError(f"safety config not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"safety config is not valid TOML: {path} ({exc})") from None
