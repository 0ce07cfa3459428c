"""Issue 13, "a new user's first hour": what the commands leave behind and how they say it.

- Outputs get the mode a plain ``open()`` gives them (0644 under umask 022, 0600 under
  077), the atomic writes of ``segment``, ``runs report`` and ``eval`` included.
- A class that is present never reads as 0%.
- The backend has one name: the same in ``result.json``, the trace and ``runs list``.
- The Python guide's example (docs/python.md) keeps its reasoning cache in the user cache folder,
  not in the working directory; the repository tracks no run state.
- ``benchmarks/make_mini_benchmark.py`` says in one line where ``imgviz`` comes from.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_architecture import BandSegmenter

import openseg_r
from openseg_r import OpenSegR
from openseg_r._support.cache import default_cache_path
from openseg_r._support.files import write_atomically
from openseg_r._support.render import format_share
from openseg_r.cli import main
from openseg_r.runs import RunsDB

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
sys.path.insert(0, str(ROOT / "benchmarks"))


@contextlib.contextmanager
def umask(mask: int):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def file_modes(*folders: Path) -> dict[str, str]:
    """Every file under ``folders``, by path, with its permission bits in octal."""
    return {
        str(path): oct(stat.S_IMODE(path.stat().st_mode))
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def tiny_args(tiny_model_files):
    config, weights = tiny_model_files
    return ["--clip-model", str(config), "--clip-pretrained", str(weights)]


# --------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_open_gives_and_a_replaced_file_keeps_its_own(tmp_path, mask):
    with umask(mask):
        write_atomically(tmp_path / "new.bin", lambda f: f.write(b"one"))
        with open(tmp_path / "plain.bin", "wb") as handle:
            handle.write(b"one")
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    os.chmod(tmp_path / "new.bin", 0o640)
    with umask(mask):
        write_atomically(tmp_path / "new.bin", lambda f: f.write(b"two"))
    assert (tmp_path / "new.bin").read_bytes() == b"two"
    assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640
    with pytest.raises(RuntimeError):
        write_atomically(tmp_path / "new.bin", lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError())))
    assert (tmp_path / "new.bin").read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "plain.bin"]  # no temporary file is left


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_segment_and_report_outputs_get_the_mode_open_gives(tmp_path, tiny_args, mask, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(PHOTO, photos / name)
    one, many, runs = tmp_path / "one", tmp_path / "many", tmp_path / "runs"
    lmm = ["--lmm", f"scripted:{SCRIPT}", "--cache", "none", "--text-cache", "none"]
    with umask(mask):
        assert (
            main(
                [
                    "segment",
                    str(PHOTO),
                    "--vocab",
                    "voc21",
                    *lmm,
                    *tiny_args,
                    "--out",
                    str(one),
                    "--runs-db",
                    str(runs / "runs.sqlite"),
                ]
            )
            == 0
        )
        run_id = json.loads((one / "result.json").read_text())["run_id"]
        assert (
            main(
                [
                    "runs",
                    "--runs-db",
                    str(runs / "runs.sqlite"),
                    "report",
                    run_id,
                    "-o",
                    str(tmp_path / "report" / "report.html"),
                ]
            )
            == 0
        )
        assert main(["segment", str(photos), "--vocab", "voc21", *lmm, *tiny_args, "--out", str(many)]) == 0
    capsys.readouterr()
    modes = file_modes(one, many, tmp_path / "report", runs)
    expected = oct(0o666 & ~mask)
    names = {Path(path).name for path in modes}
    assert {"labels.png", "overlay.png", "result.json", "report.html", "index.jsonl", "run.json"} <= names
    assert any(name.endswith(".npy") for name in names)  # the runs database's arrays
    assert {path: mode for path, mode in modes.items() if mode != expected} == {}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_eval_outputs_get_the_mode_open_gives(tmp_path, tiny_args, mask, capsys):
    from make_mini_benchmark import build

    roots = build(tmp_path / "mini")
    out, merged = tmp_path / "eval", tmp_path / "merged"
    with umask(mask):
        assert (
            main(
                [
                    "eval",
                    "--dataset",
                    "voc21",
                    "--root",
                    str(roots["voc21"]),
                    "--out",
                    str(out),
                    "--no-progress",
                    "--cache",
                    "none",
                    "--text-cache",
                    "none",
                    *tiny_args,
                ]
            )
            == 0
        )
        assert main(["eval", "merge", str(out), "--out", str(merged)]) == 0
    capsys.readouterr()
    modes = file_modes(out, merged)
    assert {"run.json", "images.jsonl", "summary.json", "summary.md"} <= {Path(path).name for path in modes}
    assert {path: mode for path, mode in modes.items() if mode != oct(0o666 & ~mask)} == {}


# --------------------------------------------------------------------------- small untruths


def test_a_share_that_rounds_to_zero_or_to_everything_says_so():
    assert [format_share(x) for x in (0.0, 8 / 187_500, 0.00049, 0.0005, 0.123456, 0.99951, 1.0)] == [
        "0.0%",
        "<0.1%",
        "<0.1%",
        "0.1%",
        "12.3%",
        ">99.9%",
        "100.0%",
    ]
    assert format_share(8 / 187_500, 2) == "<0.01%" and format_share(0.0004, 2) == "0.04%"
    assert format_share(0.0, 2, present=True) == "<0.01%"  # a fraction stored rounded to 0 with pixels


class EightPixels(BandSegmenter):
    """Every pixel is the first class but eight, which are the second."""

    def segment(self, rgb, bank, **kwargs):
        arrays = super().segment(rgb, bank, **kwargs)
        arrays.labels[:] = 0
        arrays.labels[0, :8] = 1
        return arrays


def test_a_class_of_eight_pixels_is_shown_as_present_in_every_summary(tmp_path, capsys):
    from openseg_r.cli.summary import print_result_summary
    from openseg_r.tools.output import build_output

    runs = tmp_path / "runs.sqlite"
    model = OpenSegR(segmenter=EightPixels(), lmm="none", runs_db=str(runs))
    result = model.segment(str(PHOTO), "cat, dog")
    dog = next(c for c in result.classes if c.name == "dog")
    assert dog.pixels == 8 and 0 < dog.area_fraction < 0.00005  # 8 of 375 x 500 pixels
    print_result_summary(result, None)
    printed = capsys.readouterr().out
    assert re.search(r"^dog +<0\.01% ", printed, flags=re.MULTILINE) and "0.00%" not in printed
    summary = build_output(result, "trace", "none", []).summary
    assert "- dog: <0.1% of the image" in summary and "0.0%" not in summary
    assert main(["runs", "--runs-db", str(runs), "report", result.run_id, "-o", str(tmp_path / "report.html")]) == 0
    report = (tmp_path / "report.html").read_text()
    assert "<td>&lt;0.01%</td>" in report and "<td>0.00%</td>" not in report


def test_the_backend_has_one_name_in_result_json_the_trace_and_runs_list(tmp_path, tiny_args, capsys):
    runs = tmp_path / "runs.sqlite"
    assert (
        main(
            [
                "segment",
                str(PHOTO),
                "--vocab",
                "voc21",
                "--lmm",
                f"scripted:{SCRIPT}",
                "--cache",
                "none",
                *tiny_args,
                "--out",
                str(tmp_path / "out"),
                "--runs-db",
                str(runs),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    backend = result["lmm_usage"]["backend"]
    assert re.fullmatch(r"scripted:[0-9a-f]{12}", backend)  # the kind once: not scripted:scripted:...
    assert {call["backend"] for call in result["lmm_calls"]} == {backend}
    assert RunsDB(runs).get_run(result["run_id"]).backend == backend
    capsys.readouterr()
    assert main(["runs", "--runs-db", str(runs), "list"]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"\b{re.escape(backend)}\b", listed) and "scripted:scripted" not in listed


# --------------------------------------------------------------------------- repository hygiene


def python_api_example() -> str:
    """The first Python block of the Python guide's "Python API" section."""
    readme = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    section = readme.split("\n## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_the_python_guides_example_keeps_its_cache_in_the_user_cache_folder(tmp_path, monkeypatch, tiny_model_files):
    """Run the Python guide's example as it is, with the tiny CLIP in place of the downloaded
    one, in an empty working directory: only its ``out/`` appears there."""
    config, weights = tiny_model_files

    class TinyOpenSegR(OpenSegR):
        def __init__(self, options=None, **kwargs):
            super().__init__(options, clip_model=str(config), clip_pretrained=str(weights), **kwargs)

    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    monkeypatch.chdir(work)
    monkeypatch.setattr(openseg_r, "OpenSegR", TinyOpenSegR)
    exec(compile(python_api_example(), "docs/python.md", "exec"), {})
    assert sorted(p.name for p in work.iterdir()) == ["examples", "out"]
    assert sorted(p.name for p in (work / "out").iterdir()) == ["labels.png", "overlay.png", "result.json"]
    cache = default_cache_path()
    assert cache.is_file() and cache.is_relative_to(os.environ["XDG_CACHE_HOME"])


def test_the_repository_tracks_no_run_state():
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "--", ".langgraph_api", "*.sqlite", "*.pckl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tracked.returncode == 0 and tracked.stdout == ""
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", ".langgraph_api/store.pckl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ignored.returncode == 0


def test_the_mini_benchmark_without_imgviz_says_where_it_comes_from(tmp_path):
    probe = (
        "import runpy, sys; sys.modules['imgviz'] = None; "
        f"sys.argv = ['make_mini_benchmark.py', {str(tmp_path / 'mini')!r}]; "
        f"runpy.run_path({str(ROOT / 'benchmarks' / 'make_mini_benchmark.py')!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "imgviz" in done.stderr and ".[test]" in done.stderr
    assert not (tmp_path / "mini").exists()
