"""Every way a weights file can be wrong is one line, through ``load_clip`` and through
the CLI (exit 2, no traceback, never torch's advice to load with ``weights_only=False``).
A file that cannot be read is refused before any model is built; weights of another
architecture name the model and the first keys that do not fit."""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import open_clip
import pytest
import torch

from openseg_r.errors import WeightsError
from openseg_r.segmenters.dense_clip.loading import load_clip

ROOT = Path(__file__).resolve().parents[1]
PHOTO = str(ROOT / "examples" / "voc.jpg")


def tiny_state(weights: Path) -> dict:
    return torch.load(weights, weights_only=True)


def another_architecture(folder: Path, config: Path, name: str, **vision) -> dict:
    """The state_dict of a tiny CLIP whose vision tower differs from the fixture's."""
    other = json.loads(config.read_text())
    other["vision_cfg"].update(vision)
    other_config = folder / f"{name}.json"
    other_config.write_text(json.dumps(other))
    open_clip.add_model_config(other_config)
    return open_clip.create_model(name).state_dict()


def missing(folder, config, weights):
    return folder / "missing.pt"


def random_bytes(folder, config, weights):
    (folder / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    return folder / "random.pt"


def truncated_zip(folder, config, weights):
    data = weights.read_bytes()
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    return folder / "truncated.pt"


def empty_file(folder, config, weights):
    (folder / "empty.pt").write_bytes(b"")
    return folder / "empty.pt"


def truncated_safetensors(folder, config, weights):
    from safetensors.torch import save_file

    save_file(tiny_state(weights), folder / "whole.safetensors")
    data = (folder / "whole.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return folder / "cut.safetensors"


def torchscript_archive(folder, config, weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated, and OpenAI's .pt files are such archives
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(folder / "scripted.pt"))
    return folder / "scripted.pt"


def python_objects(folder, config, weights):
    torch.save({**tiny_state(weights), "args": argparse.Namespace(lr=0.1)}, folder / "objects.pt")
    return folder / "objects.pt"


def a_list(folder, config, weights):
    torch.save([torch.zeros(3)], folder / "list.pt")
    return folder / "list.pt"


def a_tensor(folder, config, weights):
    torch.save(torch.zeros(3, 4), folder / "tensor.pt")
    return folder / "tensor.pt"


def a_json_file(folder, config, weights):
    shutil.copy(config, folder / "config.json")
    return folder / "config.json"


def not_only_tensors(folder, config, weights):
    torch.save({"epoch": 3, **tiny_state(weights)}, folder / "epoch.pt")
    return folder / "epoch.pt"


def an_empty_dict(folder, config, weights):
    torch.save({}, folder / "nothing.pt")
    return folder / "nothing.pt"


def a_key_missing_and_one_unexpected(folder, config, weights):
    state = tiny_state(weights)
    del state["visual.proj"]
    state["extra.bias"] = torch.zeros(2)
    torch.save(state, folder / "edited.pt")
    return folder / "edited.pt"


def a_deeper_vision_tower(folder, config, weights):
    torch.save(another_architecture(folder, config, "tiny-deeper", layers=3), folder / "deeper.pt")
    return folder / "deeper.pt"


def a_shallower_vision_tower(folder, config, weights):
    torch.save(another_architecture(folder, config, "tiny-shallower", layers=1), folder / "shallower.pt")
    return folder / "shallower.pt"


def a_wider_vision_tower(folder, config, weights):
    torch.save(another_architecture(folder, config, "tiny-wider", width=96), folder / "wider.pt")
    return folder / "wider.pt"


BLOCK = "visual.transformer.resblocks"
# (make the file, what the one line says, whether the model is built before the refusal)
CASES = {
    "missing file": (missing, r"^CLIP weights file not found: .*missing\.pt$", False),
    "random bytes": (
        random_bytes,
        r"cannot read CLIP weights .*random\.pt: not a PyTorch checkpoint or a "
        r"safetensors file, or a damaged one",
        False,
    ),
    "truncated zip": (
        truncated_zip,
        r"cannot read CLIP weights .*truncated\.pt: the file is damaged or "
        r"incomplete",
        False,
    ),
    "empty file": (empty_file, r"CLIP weights file .*empty\.pt is empty", False),
    "truncated safetensors": (
        truncated_safetensors,
        r"cannot read CLIP weights .*cut\.safetensors: a damaged "
        r"safetensors file",
        False,
    ),
    "TorchScript archive": (torchscript_archive, r"scripted\.pt is a TorchScript archive", False),
    "pickled Python objects": (
        python_objects,
        r"objects\.pt holds Python objects besides tensors "
        r"\(argparse\.Namespace\), which are never unpickled",
        False,
    ),
    "a list": (a_list, r"list\.pt holds a list of 1 items, not a state_dict", False),
    "a tensor": (a_tensor, r"tensor\.pt holds a tensor of shape \[3, 4\], not a state_dict", False),
    "a JSON file": (a_json_file, r"config\.json is a text file, not weights", False),
    "not only tensors": (not_only_tensors, r"epoch\.pt is not a state_dict: 'epoch' holds an int, not a tensor", False),
    "an empty dict": (an_empty_dict, r"nothing\.pt holds an empty state_dict", False),
    "edited keys": (
        a_key_missing_and_one_unexpected,
        r"the weights in .*edited\.pt do not fit tiny-clip: 1 missing key \(visual\.proj\), "
        r"1 unexpected key \(extra\.bias\)$",
        True,
    ),
    "deeper model": (
        a_deeper_vision_tower,
        rf"deeper\.pt do not fit tiny-clip: 12 unexpected keys \({BLOCK}\.2\.ln_1\.weight, "
        rf"{BLOCK}\.2\.ln_1\.bias, {BLOCK}\.2\.attn\.in_proj_weight, \.\.\.\)$",
        True,
    ),
    "shallower model": (
        a_shallower_vision_tower,
        rf"shallower\.pt do not fit tiny-clip: 12 missing keys \({BLOCK}\.1\.ln_1\.weight, "
        rf"{BLOCK}\.1\.ln_1\.bias, {BLOCK}\.1\.attn\.in_proj_weight, \.\.\.\)$",
        True,
    ),
    "wider model": (
        a_wider_vision_tower,
        r"wider\.pt do not fit tiny-clip: 32 tensors of another shape \(visual\.class_embedding \[96\] "
        r"here, \[64\] in the model; visual\.positional_embedding \[17, 96\] here, \[17, 64\] in the "
        r"model; visual\.proj \[96, 32\] here, \[64, 32\] in the model, \.\.\.\)$",
        True,
    ),
}


@pytest.fixture(scope="module")
def bad_files(tiny_model_files, tmp_path_factory):
    config, weights = tiny_model_files
    folder = tmp_path_factory.mktemp("bad_weights")
    return {case: make(folder, config, weights) for case, (make, _, _) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_weights_file_is_one_line(case, bad_files, tiny_model_files, monkeypatch):
    config, _ = tiny_model_files
    _, message, built_first = CASES[case]
    created = []
    create_model = open_clip.create_model
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: created.append(a) or create_model(*a, **k))
    with pytest.raises(WeightsError) as raised:
        load_clip(str(config), str(bad_files[case]), device="cpu", precision="fp32")
    text = str(raised.value)
    assert re.search(message, text), text
    assert "\n" not in text and "weights_only" not in text and len(text) < 600
    assert bool(created) is built_first  # a file that cannot be read is refused before a model is built


def test_weights_that_fit_still_load(tiny_model_files, tmp_path):
    """The checks refuse only what is wrong: a training checkpoint (weights under
    ``state_dict``, saved from a DistributedDataParallel wrapper) and a safetensors file load."""
    from safetensors.torch import save_file

    config, weights = tiny_model_files
    state = tiny_state(weights)
    torch.save(
        {"epoch": 7, "state_dict": {f"module.{key}": value for key, value in state.items()}}, tmp_path / "training.pt"
    )
    save_file(state, tmp_path / "weights.safetensors")
    for path in (tmp_path / "training.pt", tmp_path / "weights.safetensors"):
        loaded = load_clip(str(config), str(path), device="cpu", precision="fp32").model.state_dict()
        assert all(torch.equal(loaded[key], state[key]) for key in state), path


DRIVER = """
import json, os, sys
from openseg_r.cli.main import main

for case, argv in json.loads(sys.argv[1]):
    print(f"=== {case}", file=sys.stderr, flush=True)
    code = main(argv)
    print(f"=== exit {code} open_clip imported: {'open_clip' in sys.modules}", file=sys.stderr, flush=True)
"""


def test_the_cli_says_each_in_one_line(bad_files, tiny_model_files, tmp_path):
    """One process runs the CLI's ``main`` on every case, the missing file first: it is
    reported before torch and open_clip are imported (they take seconds)."""
    config, _ = tiny_model_files
    cases = [
        (
            case,
            [
                "segment",
                PHOTO,
                "--classes",
                "cat",
                "--no-reasoning",
                "--out",
                str(tmp_path / "out"),
                "--clip-model",
                str(config),
                "--clip-pretrained",
                str(bad_files[case]),
            ],
        )
        for case in CASES
    ]
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocks = proc.stderr.split("=== ")[1:]
    assert len(blocks) == 2 * len(CASES), proc.stderr[-3000:]
    for index, (case, (_, message, _)) in enumerate(CASES.items()):
        name, said = blocks[2 * index].split("\n", 1)
        assert name == case
        lines = said.splitlines()
        assert len(lines) == 1 and lines[0].startswith("openseg-r: error: "), (case, said)
        assert re.search(message.lstrip("^"), lines[0][len("openseg-r: error: ") :]), (case, said)
        assert "weights_only" not in said and "Traceback" not in said
        exit_line = blocks[2 * index + 1]
        assert exit_line.startswith("exit 2 "), (case, exit_line)
        if case == "missing file":
            assert exit_line.strip().endswith("open_clip imported: False")


def test_the_cli_and_the_loader_agree_on_what_names_a_file():
    """The CLI checks a --clip-pretrained file before importing the loader: the same suffixes."""
    import importlib

    from openseg_r.segmenters.dense_clip import loading

    cli_main = importlib.import_module("openseg_r.cli.main")  # the module; openseg_r.cli.main is also its function

    assert cli_main.WEIGHT_SUFFIXES == loading.WEIGHT_SUFFIXES
