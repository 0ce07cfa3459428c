"""Weights are found and loaded as open_clip would, every failure is a clear one-line
WeightsError/ConfigError (bad files: tests/test_weights_errors.py), and the start is quiet
and fast offline: a pretrained tag is read from the Hugging Face cache without asking the
hub, and when it is not cached a download is tried only if the hub answers."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import open_clip
import pytest
import torch
from loopback import hang_up_server

from openseg_r.errors import ConfigError, WeightsError
from openseg_r.segmenters.dense_clip.loading import load_clip, needs_quick_gelu
from openseg_r.segmenters.devices import cpu_computes_bf16, resolve_dtype

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "examples" / "voc.jpg")
COMMIT = "0" * 40


def test_weights_file_round_trip(tiny_model_files, tiny_clip):
    config, weights = tiny_model_files
    saved = torch.load(weights)
    loaded = load_clip(str(config), str(weights), device="cpu", precision="fp32")
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert loaded.dtype == torch.float32 and loaded.identity.endswith(str(weights))


def test_same_model_as_open_clips_own_loader(tiny_model_files):
    """The weights are read here (weights_only, checked before the model is built) and then
    go through open_clip's key conversions: the result is the model open_clip itself loads."""
    config, weights = tiny_model_files
    ours = load_clip(str(config), str(weights), device="cpu", precision="fp32")
    theirs = open_clip.create_model("tiny-clip", pretrained=str(weights))
    assert ours.model.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(tensor, theirs.state_dict()[key]) for key, tensor in ours.model.state_dict().items())
    assert (ours.mean, ours.std) == (tuple(theirs.visual.image_mean), tuple(theirs.visual.image_std))


def test_no_random_initialisation_warning_for_weights_that_load(tiny_model_files, caplog):
    """The model is built bare and then loaded: open_clip's "initialized randomly" warning
    would be false, and is kept only when random weights were asked for."""
    config, weights = tiny_model_files
    load_clip(str(config), str(weights), device="cpu", precision="fp32")
    assert "initialized randomly" not in caplog.text
    load_clip(str(config), None, device="cpu", precision="fp32")
    assert "No pretrained weights loaded for model 'tiny-clip'. Model initialized randomly." in caplog.text


def local_dir(tmp_path: Path, config: Path, weights: Path | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": json.loads(config.read_text()), "preprocess_cfg": {}})
    )
    if weights is not None:
        shutil.copy(weights, folder / "open_clip_pytorch_model.bin")
    return folder


def test_local_dir_schema(tiny_model_files, tmp_path):
    config, weights = tiny_model_files
    loaded = load_clip(f"local-dir:{local_dir(tmp_path, config, weights)}", None, device="cpu", precision="fp32")
    assert torch.equal(loaded.model.visual.proj, torch.load(weights)["visual.proj"])


def test_local_dir_without_weights_is_refused(tiny_model_files, tmp_path):
    """open_clip only logs a warning and goes on with random weights."""
    config, _ = tiny_model_files
    with pytest.raises(WeightsError, match=r"model folder .*model has no weights file"):
        load_clip(f"local-dir:{local_dir(tmp_path, config, None)}", None, device="cpu", precision="fp32")


def test_missing_weights_file(tiny_model_files, tmp_path):
    config, _ = tiny_model_files
    with pytest.raises(WeightsError, match="not found"):
        load_clip(str(config), str(tmp_path / "missing.pt"))


def test_unknown_model_and_bad_settings(tiny_model_files, tmp_path):
    config, _ = tiny_model_files
    with pytest.raises(ConfigError, match="unknown CLIP model"):
        load_clip("ViT-Z-99", None)
    with pytest.raises(WeightsError, match="model folder not found"):
        load_clip("local-dir:/nonexistent/folder", None)
    with pytest.raises(
        WeightsError,
        match=r"^CLIP weights 'laion' are neither a pretrained tag of tiny-clip "
        r"\(tags: none\) nor a file$",
    ):
        load_clip(str(config), "laion")
    with pytest.raises(WeightsError, match=r"is a folder, not a weights file .*--clip-model local-dir:"):
        load_clip(str(config), str(tmp_path))
    with pytest.raises(ConfigError, match="precision"):
        resolve_dtype("fp8", torch.device("cpu"))
    assert resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if cpu_computes_bf16() else torch.float32)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("fp32", torch.device("cuda")) == torch.float32


def test_openai_weights_run_with_quick_gelu():
    """open_clip only warns when OpenAI's QuickGELU weights meet a GELU config; the loader
    asks for QuickGELU from the tag's own config (and it is used: see the cached-tag test)."""
    assert needs_quick_gelu("ViT-B-16", "openai") is True
    assert needs_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert needs_quick_gelu("ViT-B-16", "weights/openai.pt") is False


# --------------------------------------------------------------------------- the hub and its cache


class LoopbackHub:
    """A loopback stand-in for the Hugging Face hub: serves ``files[(repo, name)]`` at
    ``/{repo}/resolve/main/{name}`` with the headers huggingface_hub reads, and logs requests."""

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        self.files = files
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, with_body: bool) -> None:
                hub.requests.append((self.command, self.path))
                repo, _, name = self.path.lstrip("/").partition("/resolve/main/")
                data = hub.files.get((repo, name))
                self.send_response(200 if data is not None or not name else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                if data is not None:
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if with_body and data:
                    self.wfile.write(data)

            def do_HEAD(self):
                self.answer(False)

            def do_GET(self):
                self.answer(True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def put_in_hub_cache(cache: Path, repo: str, name: str, data: bytes) -> None:
    """A file as huggingface_hub keeps it: models--ORG--NAME/snapshots/COMMIT/NAME, refs/main -> COMMIT."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / COMMIT).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / COMMIT / name).write_bytes(data)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)


TINY_TAGS = {  # pretrained tags for the tiny model, as open_clip lists ViT-B-16's
    "hubtag": {"hf_hub": "test-org/tiny-clip/", "quick_gelu": False},
    "quick": {"hf_hub": "test-org/tiny-clip-quick/", "quick_gelu": True},
}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of the test's own, and tags for the tiny model."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-clip", TINY_TAGS)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "hub"


@pytest.fixture
def online(hub_cache, monkeypatch):
    """As on a machine with network: offline mode off (the hub address is set per test)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return constants


@pytest.fixture
def spies(monkeypatch):
    """Records calls to open_clip's model creation and download, and lets them run."""
    calls = {"create_model": [], "download_pretrained": []}
    for name in calls:
        real = getattr(open_clip, name)
        monkeypatch.setattr(
            open_clip, name, lambda *a, _real=real, _name=name, **k: calls[_name].append(a) or _real(*a, **k)
        )
    return calls


def test_a_cached_tag_is_loaded_without_asking_the_hub(tiny_model_files, online, hub_cache, spies, monkeypatch):
    config, weights = tiny_model_files
    from safetensors.torch import save_file

    put_in_hub_cache(hub_cache, "test-org/tiny-clip", "open_clip_pytorch_model.bin", weights.read_bytes())
    save_file(torch.load(weights), hub_cache / "quick.safetensors")
    put_in_hub_cache(
        hub_cache,
        "test-org/tiny-clip-quick",
        "open_clip_model.safetensors",
        (hub_cache / "quick.safetensors").read_bytes(),
    )
    hub = hang_up_server()
    monkeypatch.setattr(online, "ENDPOINT", hub.url)
    try:
        plain = load_clip(str(config), "hubtag", device="cpu", precision="fp32")
        quick = load_clip(str(config), "quick", device="cpu", precision="fp32")
    finally:
        hub.close()
    assert hub.connections == 0 and spies["download_pretrained"] == []
    for loaded in (plain, quick):
        assert torch.equal(loaded.model.visual.proj, torch.load(weights)["visual.proj"])
    activation = [block.mlp.gelu for block in quick.model.visual.transformer.resblocks]
    assert all(isinstance(module, open_clip.transformer.QuickGELU) for module in activation)
    assert isinstance(plain.model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert plain.pretrained == "hubtag"


def test_nothing_cached_and_offline_is_one_line_before_anything_is_built(tiny_model_files, hub_cache, spies):
    config, _ = tiny_model_files
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    with pytest.raises(WeightsError) as raised:
        load_clip(str(config), "hubtag", device="cpu", precision="fp32")
    message = str(raised.value)
    assert message == (
        f"CLIP weights 'hubtag' of tiny-clip are not in the Hugging Face cache ({hub_cache}, repo test-org/tiny-clip) "
        "and HF_HUB_OFFLINE is set: pass a weights file with --clip-pretrained FILE, or copy the Hugging Face cache "
        "from a machine with network (README, Models)"
    )
    assert spies == {"create_model": [], "download_pretrained": []}


@pytest.mark.parametrize("hub_kind", ["closed port", "resets connections"])
def test_nothing_cached_and_hub_unreachable_is_one_line_without_retries(
    tiny_model_files, online, spies, monkeypatch, hub_kind
):
    config, _ = tiny_model_files
    hub = hang_up_server() if hub_kind == "resets connections" else None
    url = hub.url if hub else closed_port_url()
    monkeypatch.setattr(online, "ENDPOINT", url)
    try:
        with pytest.raises(WeightsError) as raised:
            load_clip(str(config), "hubtag", device="cpu", precision="fp32")
    finally:
        if hub:
            hub.close()
    message = str(raised.value)
    assert f"and cannot be downloaded ({url} is not reachable: " in message and "\n" not in message
    assert message.endswith(
        "pass a weights file with --clip-pretrained FILE, or copy the Hugging Face cache from a "
        "machine with network and set HF_HUB_OFFLINE=1 (README, Models)"
    )
    assert spies == {"create_model": [], "download_pretrained": []}  # huggingface_hub and its retries never ran
    if hub:
        assert hub.connections == 1  # the one short probe


def test_openai_tag_without_network_names_what_it_looked_for(spies):
    with pytest.raises(WeightsError) as raised:
        load_clip("ViT-B-16", "openai")
    message = str(raised.value)
    assert message.startswith("CLIP weights 'openai' of ViT-B-16 are not in the Hugging Face cache (")
    assert "repo timm/vit_base_patch16_clip_224.openai) and HF_HUB_OFFLINE is set" in message
    assert message.endswith(
        ": pass a weights file with --clip-pretrained FILE (with --clip-model ViT-B-16-quickgelu: "
        "these weights run with QuickGELU), or copy the Hugging Face cache from a machine with "
        "network (README, Models)"
    )
    assert spies["create_model"] == []


def test_a_file_of_quick_gelu_weights_runs_with_the_quickgelu_config(tiny_model_files, hub_cache, tmp_path):
    """A tag says its weights need QuickGELU; a file does not, so the advice to pass a file
    names the model's ``-quickgelu`` config, and with it the file runs with QuickGELU."""
    config, weights = tiny_model_files
    quick_config = tmp_path / "tiny-clip-quickgelu.json"
    quick_config.write_text(json.dumps({**json.loads(config.read_text()), "quick_gelu": True}))
    loaded = load_clip(str(quick_config), str(weights), device="cpu", precision="fp32")
    assert all(
        isinstance(block.mlp.gelu, open_clip.transformer.QuickGELU)
        for block in loaded.model.visual.transformer.resblocks
    )
    with pytest.raises(
        WeightsError,
        match=r"--clip-pretrained FILE \(with --clip-model tiny-clip-quickgelu: these "
        r"weights run with QuickGELU\)",
    ):
        load_clip(str(config), "quick", device="cpu", precision="fp32")  # offline, nothing cached
    with pytest.raises(WeightsError) as raised:
        load_clip(str(config), "hubtag", device="cpu", precision="fp32")  # GELU weights: no such advice
    assert "quickgelu" not in str(raised.value)
    # the name the advice gives for OpenAI's weights is ViT-B-16 with QuickGELU, nothing else changed
    assert open_clip.get_model_config("ViT-B-16-quickgelu") == {
        **open_clip.get_model_config("ViT-B-16"),
        "quick_gelu": True,
    }


def test_an_hf_hub_model_in_the_cache_is_loaded_without_asking_the_hub(
    tiny_model_files, online, hub_cache, spies, monkeypatch
):
    """``hf-hub:ORG/REPO``: config and weights from the cache; open_clip would ask the hub
    for both first (a minute of retries offline), and go on with random weights if the
    weights could not be had."""
    config, weights = tiny_model_files
    open_clip_config = json.dumps({"model_cfg": json.loads(config.read_text()), "preprocess_cfg": {}}).encode()
    put_in_hub_cache(hub_cache, "test-org/tiny-hub", "open_clip_config.json", open_clip_config)
    hub = hang_up_server()
    monkeypatch.setattr(online, "ENDPOINT", hub.url)
    try:
        with pytest.raises(
            WeightsError,
            match=r"^CLIP weights of hf-hub:test-org/tiny-hub are not in the Hugging "
            r"Face cache .* and cannot be downloaded \(http://127",
        ):
            load_clip("hf-hub:test-org/tiny-hub", None, device="cpu")  # the config alone is not enough
        assert hub.connections == 1 and spies["create_model"] == []
        put_in_hub_cache(hub_cache, "test-org/tiny-hub", "open_clip_pytorch_model.bin", weights.read_bytes())
        loaded = load_clip("hf-hub:test-org/tiny-hub", None, device="cpu", precision="fp32")
    finally:
        hub.close()
    assert hub.connections == 1
    assert torch.equal(loaded.model.visual.proj, torch.load(weights)["visual.proj"])
    assert loaded.model_name == "hf-hub:test-org/tiny-hub" and loaded.tokenizer("a cat").shape == (1, 77)


DOWNLOAD = """
import os, sys, urllib.request, open_clip
from openseg_r.segmenters.dense_clip.loading import load_clip

open_clip.pretrained._PRETRAINED["tiny-clip"] = {"hubtag": {"hf_hub": "test-org/tiny-clip/"}}
first = load_clip(sys.argv[1], "hubtag", device="cpu", precision="fp32")
urllib.request.urlopen(os.environ["HF_ENDPOINT"] + "/first-load-done").close()  # a mark in the hub's log
again = load_clip(sys.argv[1], "hubtag", device="cpu", precision="fp32")
print(first.model.visual.proj.sum().item(), again.model.visual.proj.sum().item())
"""


def test_a_tag_is_downloaded_once_then_read_from_the_cache(tiny_model_files, hub_cache):
    """The download goes through open_clip and huggingface_hub to a loopback hub (as
    HF_ENDPOINT); the next load finds the file in the cache it filled and asks nothing."""
    config, weights = tiny_model_files
    hub = LoopbackHub({("test-org/tiny-clip", "open_clip_pytorch_model.bin"): weights.read_bytes()})
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(hub_cache), "NO_PROXY": "127.0.0.1,localhost"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", DOWNLOAD, str(config)], capture_output=True, text=True, env=env, timeout=300
        )
    finally:
        hub.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("GET", "/test-org/tiny-clip/resolve/main/open_clip_pytorch_model.bin") in hub.requests
    assert hub.requests[-1] == ("GET", "/first-load-done")  # the second load asked the hub nothing
    assert list(hub_cache.glob("models--test-org--tiny-clip/snapshots/*/open_clip_pytorch_model.bin"))
    expected = torch.load(weights)["visual.proj"].sum().item()
    assert [float(value) for value in proc.stdout.split()] == pytest.approx([expected, expected])


CLI = """
import json, os, sys
from openseg_r.cli.main import main

for case, env in json.loads(sys.argv[1]):
    os.environ.update(env)
    print(f"=== {case}", file=sys.stderr, flush=True)
    print(f"=== exit {main(sys.argv[2:])}", file=sys.stderr, flush=True)
"""


def test_the_cli_start_without_weights_is_one_quiet_line(tmp_path):
    """The default model, nothing cached: with HF_HUB_OFFLINE=1, and with a hub address
    that cannot be reached (asked once, by the probe; huggingface_hub would retry for a minute)."""
    hub = hang_up_server()
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "NO_PROXY": "127.0.0.1,localhost"}
    # unreachable first: huggingface_hub reads HF_HUB_OFFLINE once, when the first case imports it
    cases = [("unreachable", {}), ("offline", {"HF_HUB_OFFLINE": "1"})]
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                CLI,
                json.dumps(cases),
                "segment",
                PHOTO,
                "--vocab",
                "voc21",
                "--no-reasoning",
                "--out",
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    finally:
        hub.close()
    said = proc.stderr.split("=== ")[1:]
    assert proc.returncode == 0 and len(said) == 4, proc.stderr[-3000:]
    for (case, _), block, exit_line in zip(cases, said[0::2], said[1::2]):
        name, lines = block.split("\n", 1)
        assert name == case and exit_line.strip() == "exit 2", proc.stderr[-3000:]
        assert len(lines.splitlines()) == 1, lines
        assert lines.startswith(
            "openseg-r: error: CLIP weights 'openai' of ViT-B-16 are not in the Hugging Face "
            f"cache ({tmp_path / 'hf' / 'hub'}, repo timm/vit_base_patch16_clip_224.openai)"
        )
        assert "--clip-pretrained FILE" in lines and "HF_HUB_OFFLINE" in lines
    assert f"cannot be downloaded ({hub.url} is not reachable" in said[0]
    assert hub.connections == 1


QUIET = """
import logging, sys
from openseg_r.cli.main import main

main(sys.argv[1:] + ["vocabularies"])
import huggingface_hub.file_download  # as loading a model imports it, after the CLI has set up logging
logging.getLogger("huggingface_hub.utils._http").warning("Retrying in 1s [Retry 1/5].")
logging.getLogger("open_clip").error("Failed to download weights for tag 'openai'")
"""


def test_the_cli_keeps_library_logging_quiet():
    """Without --debug, neither huggingface_hub's retry warnings (its own handler plus the
    root's printed each twice) nor open_clip's logged errors reach stderr."""
    # In-process CLI calls of other tests set HF_HUB_VERBOSITY in this process: start clean.
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_VERBOSITY"}
    quiet = subprocess.run([sys.executable, "-c", QUIET], capture_output=True, text=True, timeout=120, env=env)
    debug = subprocess.run(
        [sys.executable, "-c", QUIET, "--debug"], capture_output=True, text=True, timeout=120, env=env
    )
    assert quiet.returncode == 0 and debug.returncode == 0, quiet.stderr + debug.stderr
    assert quiet.stderr == ""
    assert "Retrying in 1s" in debug.stderr and "Failed to download weights" in debug.stderr


def test_auto_precision_is_bf16_only_on_cpus_that_compute_it(monkeypatch):
    import openseg_r.segmenters.devices as loading

    flags = {"avx512_bf16": False, "amx_bf16": False, "avx512_f": True}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(flags))
    assert not loading.cpu_computes_bf16() and resolve_dtype("auto", torch.device("cpu")) == torch.float32
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flag=flag: dict(flags, **{flag: True}))
        assert loading.cpu_computes_bf16() and resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("fp32", torch.device("cpu")) == torch.float32  # what pins it


def test_protocol_presets_pin_fp32_on_a_cpu_and_leave_the_gpu_to_auto():
    from openseg_r.config.options import ModelOptions
    from openseg_r.config.presets import protocol_for

    voc = protocol_for("voc21")
    assert voc.apply(ModelOptions(device="cpu"))[0].precision == "fp32"
    assert voc.apply(ModelOptions(device="cpu", precision="bf16"))[0].precision == "bf16"  # asked for: kept
    assert voc.apply(ModelOptions(device="cuda"))[0].precision == "auto"
