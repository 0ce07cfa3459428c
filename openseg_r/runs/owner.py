"""Which process runs a recorded run, and whether it still does.

A run's row is ``running`` from its start until its process records how it ended. A
process killed with SIGKILL (or a machine that lost power) records nothing, so the row
also names its owner: pid, host name, and on Linux a token of the kernel boot, the pid
namespace and the process's start time, which tells a live owner from a new process that
got the same pid. While it runs, the owner also refreshes a heartbeat
(:data:`HEARTBEAT_SECONDS`). Readers derive ``interrupted`` from that; nothing is written.

- same host, same boot and pid namespace: the owner is gone when its pid is not alive,
  is a zombie, or belongs to a process started at another time (pid reused);
- anywhere else (another host, another container, no ``/proc``): the owner is gone when
  its heartbeat is older than :data:`STALE_AFTER_SECONDS`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

HEARTBEAT_SECONDS = 20.0
STALE_AFTER_SECONDS = 120.0  # six missed heartbeats: a busy machine still beats far more often


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    token: str | None  # "<boot id>|<pid namespace>|<start time in clock ticks>" on Linux, else None


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(pid=pid, host=socket.gethostname(), token=process_token(pid))


def process_token(pid: int) -> str | None:
    """What identifies process ``pid`` across pid reuse and reboots, or None where /proc
    cannot say (not Linux, or the process is gone)."""
    machine = _machine()
    stat = _proc_stat(pid)
    if machine is None or stat is None:
        return None
    return f"{machine}|{stat[1]}"


def owner_is_gone(pid: int | None, host: str | None, token: str | None, heartbeat: float | None, now: float) -> bool:
    """True when the process recorded as a run's owner cannot be running it any more."""
    if pid and pid > 0 and host == socket.gethostname():
        here = _machine()
        same_machine = token is not None and here is not None and token.rsplit("|", 1)[0] == here
        if same_machine:
            stat = _proc_stat(pid)
            return stat is None or stat[0] == "Z" or f"{here}|{stat[1]}" != token
        if token is None and here is None and not _pid_alive(pid):  # no /proc here: a dead pid still tells
            return True
    return heartbeat is None or now - heartbeat > STALE_AFTER_SECONDS


def _machine() -> str | None:
    """This kernel boot and pid namespace: pids compare only within them."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}|{namespace}"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a live process, or None."""
    if pid <= 0:
        return None
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True
