"""The Ray engine's command-line edges, which need no cluster: usage errors and a
missing Ray are one line each, before any model or cluster starts."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from cli_calls import call
from PIL import Image

from openseg_r.distributed.cluster import INSTALL_HINT, require_ray
from openseg_r.errors import ConfigError


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("openseg-r: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def folder_dataset(tmp_path):
    """The smallest dataset in the folder layout: one image, its label, two classes."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "labels" / "a.png")
    (root / "classes.txt").write_text("cat\nsofa\n")
    return root


def test_engine_flags_without_engine_ray_are_a_usage_error(folder_dataset, tmp_path, capsys):
    assert (
        call("eval", "--dataset", "folder", "--root", folder_dataset, "--out", tmp_path / "out", "--actors", "2") == 2
    )
    assert "--actors need --engine ray" in error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("cpus", ["0", "-1", "nan", "inf"])
def test_cpus_per_actor_must_be_a_positive_number(folder_dataset, tmp_path, capsys, cpus):
    assert (
        call(
            "eval",
            "--dataset",
            "folder",
            "--root",
            folder_dataset,
            "--out",
            tmp_path / "out",
            "--engine",
            "ray",
            "--cpus-per-actor",
            cpus,
        )
        == 2
    )
    assert f"--cpus-per-actor must be a positive number of CPUs, got {float(cpus)!r}" in error_line(capsys)
    assert not (tmp_path / "out").exists()
    assert (
        call(
            "eval", "--dataset", "folder", "--root", folder_dataset, "--out", tmp_path / "out", "--cpus-per-actor", "2"
        )
        == 2
    )
    assert "--cpus-per-actor need --engine ray" in error_line(capsys)


def test_shard_with_engine_ray_is_refused_in_one_line(folder_dataset, tmp_path, capsys):
    assert (
        call(
            "eval",
            "--dataset",
            "folder",
            "--root",
            folder_dataset,
            "--out",
            tmp_path / "out",
            "--engine",
            "ray",
            "--shard",
            "0/2",
        )
        == 2
    )
    assert "drop --shard" in error_line(capsys)


def test_without_ray_the_engine_says_how_to_install_it(folder_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ConfigError, match="pip install 'openseg-r\\[ray\\]'"):
        require_ray()
    assert (
        call("eval", "--dataset", "folder", "--root", folder_dataset, "--out", tmp_path / "out", "--engine", "ray") == 2
    )
    assert error_line(capsys) == f"openseg-r: error: {INSTALL_HINT}"
