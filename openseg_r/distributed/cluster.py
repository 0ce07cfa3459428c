"""Joining (or starting) the Ray cluster the work runs on."""

from __future__ import annotations

import os

from openseg_r.config.options import DEFAULT_CPUS_PER_ACTOR, checked_cpus_per_actor  # noqa: F401 (for the engines)
from openseg_r.errors import ConfigError

INSTALL_HINT = "Ray is not installed: pip install 'openseg-r[ray]'"
# Passed on to the actors' processes, so a worker reads the same offline flags, config and caches.
INHERITED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "OPENSEG_R_LMM",
    "OPENSEG_R_CONFIG",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
)


def actor_threads(cpus_per_actor: float) -> int:
    """torch threads for an actor given ``cpus_per_actor`` CPUs: their whole number, at least 1."""
    return max(1, int(cpus_per_actor))


def require_ray():
    """The ``ray`` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 (the pipeline needs Ray Data, not only Ray core)
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` ("auto": the one this machine belongs to, started with
    ``ray start``; "ray://host:10001": through Ray Client), or start a local one when None.
    Nothing happens when Ray is already initialised in this process (a user's own session)."""
    ray = require_ray()
    if ray.is_initialized():
        return
    env = {name: os.environ[name] for name in INHERITED_ENV if name in os.environ}
    try:
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            log_to_driver=True,
            include_dashboard=False if address is None else None,
            runtime_env={"env_vars": env} if env else None,
        )
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot connect to the Ray cluster at {address or 'a new local cluster'}: {first}") from None
