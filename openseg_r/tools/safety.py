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

from openseg_r.errors import ConfigError, OpenSegRError, clipped, describe_validation_error
from openseg_r.schemas import Vocabulary
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
    # Text sentences a call's vocabulary may cost: distinct names and synonyms x templates
    # (ADE-847 with synonyms: 1,298 x 14 = 18,172; 25,000 synonyms x 14 would be 350,000).
    max_text_sentences: int = Field(50_000, ge=1)
    call_timeout_s: float = Field(300.0, gt=0)  # per segmentation call
    max_concurrent: int = Field(2, ge=1, le=64)  # segmentations at once; the rest wait in a queue
    queue_timeout_s: float = Field(30.0, ge=0)  # how long a call may wait for a free slot before it is refused

    @classmethod
    def from_config(cls, data: dict | None = None, **overrides) -> "SafetyLimits":
        """The ``[safety]`` table of the config file (see ``openseg_r.config.file.config_file``),
        with explicit overrides (None values are ignored)."""
        if data is None:
            from openseg_r.config.file import read_config

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
    """The bytes of a regular file under an allowed root.

    The roots are checked before anything about the file is looked up: symlinks are
    resolved as far as they exist (never failing on a missing part), and a path that
    lands outside the roots gets one message whether or not it exists, so a caller
    cannot probe the server's other files."""
    roots = limits.resolved_roots()
    if not roots:
        raise ToolInputError("reading image files is disabled on this server; send the image as base64 instead")
    if not isinstance(value, str) or "\x00" in value or not value.strip():
        raise ToolInputError("the image path is empty or contains a NUL character")
    shown = _shown(value)
    text = value.strip()
    # only the server's own home: '~name' would tell whether a user named so exists
    given = Path(os.path.expanduser(text) if text == "~" or text.startswith("~/") else text)
    if ".." in given.parts:
        raise ToolInputError("the image path must not contain '..'")
    candidate = given if given.is_absolute() else roots[0] / given
    resolved = Path(os.path.realpath(candidate))  # non-strict: a missing file or a loop raises nothing here
    if not any(resolved.is_relative_to(root) for root in roots):
        # the same words whether or not it exists, and without the path, so the reply is the same
        raise ToolInputError(f"the image path is outside the allowed folders ({', '.join(map(str, roots))})")
    try:
        info = resolved.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ToolInputError(f"no such image file: {shown}") from None
    except OSError:  # symlink loops, permissions, names too long
        raise ToolInputError(f"the image file cannot be read: {shown}") from None
    if not stat.S_ISREG(info.st_mode):  # refused before it is opened: opening a device or pipe can block
        raise ToolInputError(f"not a regular file (a directory, device or pipe): {shown}")
    if info.st_size > limits.max_file_bytes:
        raise ToolInputError(f"the image file is {info.st_size:,} bytes, over the limit of {limits.max_file_bytes:,}")
    return _read_regular_file(resolved, info, shown, limits.max_file_bytes)


def _read_regular_file(path: Path, checked: os.stat_result, shown: str, limit: int) -> bytes:
    """Open without following a symlink and without blocking, and read only if it is still
    the regular file that was checked (not swapped for a link, pipe or device meanwhile)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        raise ToolInputError(f"the image file cannot be read: {shown}") from None
    with os.fdopen(descriptor, "rb") as handle:
        opened = os.fstat(descriptor)
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino) or not stat.S_ISREG(opened.st_mode):
            raise ToolInputError(f"the image file changed while it was being read: {shown}")
        try:
            data = handle.read(limit + 1)
        except OSError:
            raise ToolInputError(f"the image file cannot be read: {shown}") from None
    if len(data) > limit:  # grew while we looked
        raise ToolInputError(f"the image file is over the limit of {limit:,} bytes")
    return data


def _shown(value: str) -> str:
    """A caller's value as an error message repeats it: quoted, on one line, at most about 80 characters."""
    return repr(clipped(value))


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
                with client.stream(
                    "GET", pinned, headers=headers, extensions={"sni_hostname": parts.hostname}
                ) as response:
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
        infos = socket.getaddrinfo(
            parts.hostname, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError):
        raise ToolInputError(f"the image URL's host cannot be resolved: {_shown(parts.hostname)}") from None
    addresses = {info[4][0] for info in infos}
    for address in addresses:
        if not is_public_address(address):
            raise ToolInputError(
                f"the image URL's host resolves to a non-public address ({address}); "
                "loopback, link-local and private addresses are refused"
            )
    return parts, sorted(addresses)[0]


def is_public_address(address: str) -> bool:
    """False for loopback, link-local, private, reserved, multicast and unspecified addresses,
    and for IPv6 addresses that carry such an IPv4 address inside them (IPv4-mapped, 6to4,
    Teredo, NAT64): a host could route those to the private IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            return bool(embedded) and all(_is_public_ip(inner) for inner in embedded)
    return _is_public_ip(ip)


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_REFUSED_IPV4_CARRIERS = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64: where the IPv4 address sits is site-defined
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated), and :: and ::1
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 address carries: None for an ordinary IPv6 address;
    an empty tuple for a carrier form that is refused whatever it carries."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo  # (server, client): both must be public
    if ip in _NAT64_WELL_KNOWN:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if any(ip in network for network in _REFUSED_IPV4_CARRIERS):
        return ()
    return None


def _is_public_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_global and not (
        ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


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
            raise ToolInputError(
                f"a class name is {len(item.strip())} characters, over the limit of {limits.max_name_chars}"
            )
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
