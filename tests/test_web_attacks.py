"""The page's event routes against a client that speaks Gradio's queue protocol by hand, as
an attacker would, with ``openseg-r serve web`` really running (README, The web app: "a
forged path to another file is refused like a missing one").

Each forged file reference (a secret image outside every folder, ``/etc/passwd``,
``/proc/self/environ``, ``/dev/zero``, a FIFO, a link planted in the upload folder, a URL)
must be refused in one line before Gradio copies or opens anything; the server must stay
up and quick, and nothing of the named files may appear in Gradio's folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from loopback import free_port, wait_until_listening

from openseg_r.tools.safety import SafetyLimits

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
GONE = "the uploaded file is gone; upload it again"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_files):
    folder = tmp_path_factory.mktemp("web-attacks")
    config, weights = tiny_model_files
    port = free_port()
    gradio_folder = folder / "gradio"
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(gradio_folder),
        XDG_CACHE_HOME=str(folder / "cache"),
        XDG_DATA_HOME=str(folder / "data"),
        XDG_CONFIG_HOME=str(folder / "config"),
        PYTHONWARNINGS="ignore",
    )
    command = [
        sys.executable,
        "-m",
        "openseg_r.cli",
        "serve",
        "web",
        "--port",
        str(port),
        "--clip-model",
        str(config),
        "--clip-pretrained",
        str(weights),
        "--lmm",
        "none",
    ]
    log = (folder / "server.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        wait_until_listening(process, port, "the web app")
        yield {"url": f"http://127.0.0.1:{port}", "gradio": gradio_folder, "folder": folder, "process": process}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def join(server, path: object, timeout: float = 10.0) -> httpx.Response:
    """``POST /gradio_api/queue/join`` for the run button, naming ``path`` as the image."""
    body = {
        "data": [
            {"path": path, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}},
            "cat, dog",
            "",
            False,
            "off",
            False,
        ],
        "event_data": None,
        "fn_index": 2,
        "trigger_id": 1,
        "session_hash": "attacker",
    }
    return httpx.post(f"{server['url']}/gradio_api/queue/join", json=body, timeout=timeout)


def files_under(folder: Path) -> dict[str, int]:
    return (
        {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
        if folder.exists()
        else {}
    )


def assert_refused(answer: httpx.Response, line: str = GONE) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.text.count("\n") == 1 and answer.json() == {"error": line}, answer.text


def assert_still_quick(server) -> None:
    started = time.monotonic()
    page = httpx.get(server["url"] + "/", timeout=10)
    assert page.status_code == 200 and time.monotonic() - started < 5
    assert server["process"].poll() is None


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "secret" / "secret.png"
    path.parent.mkdir()
    shutil.copy(PHOTO, path)  # a valid image: were it read, the run would succeed and show it
    return path


@pytest.mark.parametrize(
    "target",
    [
        "secret",
        "missing",
        "/etc/passwd",
        "/proc/self/environ",
        "dot-dot",
        "http://127.0.0.1:9/x.png",
        "file:///etc/passwd",
        "",
    ],
)
def test_a_forged_path_is_refused_in_one_line_and_nothing_is_copied(server, secret, target):
    before = files_under(server["gradio"])
    named = {
        "secret": str(secret),
        "missing": str(secret.with_name("missing.png")),
        "dot-dot": os.path.join(server["gradio"], os.path.relpath(secret, server["gradio"])),
    }.get(target, target)
    assert_refused(join(server, named))
    assert files_under(server["gradio"]) == before
    assert_still_quick(server)


def test_a_path_that_is_not_a_string_is_refused(server):
    for value in (["/etc/passwd"], {"path": "/etc/passwd"}, 7):
        assert_refused(join(server, value))
    assert_still_quick(server)


def test_dev_zero_is_refused_at_once_and_the_server_stays_up(server):
    started = time.monotonic()
    assert_refused(join(server, "/dev/zero", timeout=10))
    assert time.monotonic() - started < 5
    assert_still_quick(server)


def test_a_fifo_is_refused_without_blocking_anyone(server, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert_refused(join(server, str(fifo), timeout=10))
    assert_still_quick(server)


def test_a_fifo_or_a_link_planted_in_the_upload_folder_is_refused(server, secret):
    """Even inside Gradio's folder, only a regular file that stays inside it is an upload."""
    planted = server["gradio"] / "planted"
    planted.mkdir(parents=True, exist_ok=True)
    os.mkfifo(planted / "pipe.png")
    (planted / "link.png").symlink_to(secret)
    (planted / "zero.png").symlink_to("/dev/zero")
    for name in ("pipe.png", "link.png", "zero.png"):
        assert_refused(join(server, str(planted / name)))
    assert_refused(join(server, str(planted)))  # a folder
    assert_still_quick(server)


def test_a_real_upload_passes_the_gate_and_is_queued(server):
    uploaded = httpx.post(
        f"{server['url']}/gradio_api/upload", files={"files": ("voc.jpg", PHOTO.read_bytes())}, timeout=30
    )
    assert uploaded.status_code == 200, uploaded.text
    (path,) = uploaded.json()
    answer = join(server, path)
    assert answer.status_code == 200 and "event_id" in answer.json(), answer.text


def test_an_upload_over_the_file_limit_is_refused_with_its_size(server):
    big = server["gradio"] / "big"
    big.mkdir(parents=True, exist_ok=True)
    path = big / "big.png"
    limit = SafetyLimits().max_file_bytes
    with path.open("wb") as file:
        file.truncate(limit + 1)  # sparse: nothing to write
    assert_refused(join(server, str(path)), f"the image file is {limit + 1:,} bytes, over the limit of {limit:,}")


def test_sigterm_ends_the_process_right_after_its_last_line(tmp_path, tiny_model_files):
    """It used to say "stopped" at once and exit about 10 s later (the interpreter's teardown)."""
    config, weights = tiny_model_files
    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
        PYTHONWARNINGS="ignore",
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "serve",
            "web",
            "--port",
            str(port),
            "--clip-model",
            str(config),
            "--clip-pretrained",
            str(weights),
            "--lmm",
            "none",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        wait_until_listening(process, port, "the web app")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        process.kill()
    assert process.returncode == 0 and stderr.strip().splitlines()[-1] == "openseg-r: stopped", stderr
    assert elapsed < 4, elapsed
