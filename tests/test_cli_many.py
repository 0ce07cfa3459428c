"""``openseg-r segment`` on many images: folders, globs, index.jsonl, bad files, --resume.

Run in-process (``openseg_r.cli.main``) with the tiny random CLIP and small crops of the
real VOC photo, two images at a time."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from openseg_r import cli
from openseg_r.runs.inputs import expand_inputs, output_names

CLASSES = "person, table, chair"


@pytest.fixture
def tiny_args(tiny_model_files):
    config, weights = tiny_model_files
    return [
        "--clip-model",
        str(config),
        "--clip-pretrained",
        str(weights),
        "--classes",
        CLASSES,
        "--no-reasoning",
        "--concurrency",
        "2",
    ]


@pytest.fixture
def photos(tmp_path, voc):
    """A folder with three small photos (one in a subfolder, one with an upper-case
    extension), plus files that are not taken: a text file and a hidden folder."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".thumbs").mkdir()
    rgb = voc["rgb"]
    Image.fromarray(rgb[:96, :128]).save(folder / "a.jpg")
    Image.fromarray(rgb[100:196, 100:228]).save(folder / "sub" / "b.png")
    Image.fromarray(rgb[200:296, 200:328]).save(folder / "sub" / "c.PNG")
    Image.fromarray(rgb[:96, :128]).save(folder / ".thumbs" / "a.png")
    (folder / "notes.txt").write_text("not an image, not taken")
    return folder


def corrupt_png(path: Path, voc) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(voc["rgb"][:96, :128]).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def segment(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["segment", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def index_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def openseg_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("openseg-r")]


# --------------------------------------------------------------------------- end to end


def test_folder_with_a_corrupt_file(tmp_path, photos, voc, tiny_args, capsys):
    bad = corrupt_png(photos / "sub" / "bad.png", voc)
    out = tmp_path / "out"
    code, stdout, err = segment(capsys, photos, *tiny_args, "--out", out)
    assert code == 3, err
    assert "Traceback" not in err
    lines = openseg_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"openseg-r: skipped {bad}: image is corrupt or truncated (")
    assert sorted(p.name for p in out.iterdir()) == ["a", "index.jsonl", "run.json", "sub__b", "sub__c"]
    for folder in ("a", "sub__b", "sub__c"):
        assert {p.name for p in (out / folder).iterdir()} == {"labels.png", "overlay.png", "result.json"}
    lines = index_lines(out)
    assert sorted(line["image"] for line in lines) == sorted(
        str(p) for p in (photos / "a.jpg", photos / "sub" / "b.png", photos / "sub" / "c.PNG", bad)
    )
    by_image = {line["image"]: line for line in lines}
    failed = by_image[str(bad)]
    assert failed["ok"] is False and failed["out"] is None and failed["classes"] == {}
    assert failed["error"].startswith("image is corrupt or truncated")
    good = by_image[str(photos / "sub" / "b.png")]
    assert good["ok"] is True and good["out"] == "sub__b" and good["error"] is None and good["seconds"] > 0
    result = json.loads((out / "sub__b" / "result.json").read_text())
    assert good["classes"] == {c["name"]: round(c["area_fraction"], 6) for c in result["classes"] if c["pixels"]}
    assert abs(sum(good["classes"].values()) - 1) < 1e-4 and result["image"]["source"] == str(photos / "sub" / "b.png")
    assert "segmented 3 of 4 image(s) (1 failed)" in stdout


def test_quoted_glob_and_several_files(tmp_path, photos, tiny_args, capsys):
    out = tmp_path / "glob"
    code, stdout, err = segment(capsys, photos / "**" / "*.png", *tiny_args, "--out", out)
    assert code == 0, err
    assert [line["image"] for line in index_lines(out)] == [str(photos / "sub" / "b.png")]  # c.PNG: other case
    assert sorted(p.name for p in out.iterdir()) == ["b", "index.jsonl", "run.json"]
    out = tmp_path / "files"
    code, stdout, err = segment(capsys, photos / "a.jpg", photos / "sub" / "c.PNG", *tiny_args, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a", "index.jsonl", "run.json", "sub__c"]


def test_resume_does_only_what_is_missing(tmp_path, photos, tiny_args, capsys, monkeypatch):
    out = tmp_path / "out"
    assert segment(capsys, photos, *tiny_args, "--out", out)[0] == 0
    assert len(index_lines(out)) == 3
    stamps = {folder: (out / folder / "result.json").stat().st_mtime_ns for folder in ("a", "sub__c")}
    for path in (out / "sub__b").iterdir():
        path.unlink()
    (out / "sub__b").rmdir()
    with (out / "index.jsonl").open("a") as index:
        index.write('{"image": "' + str(photos / "a.jpg") + '", "ok": fal')  # a line a crash cut short
    monkeypatch.chdir(tmp_path)  # the same images, spelled relative to here this time
    code, stdout, err = segment(capsys, "./photos", *tiny_args, "--out", out, "--resume")
    assert code == 0, err
    assert "segmented 1 of 1 image(s) (0 failed, 2 already done)" in stdout
    lines = (out / "index.jsonl").read_text().splitlines()
    assert len(lines) == 5 and lines[3].endswith('"ok": fal')
    last = json.loads(lines[4])
    assert last["image"] == "./photos/sub/b.png" and last["ok"] and last["out"] == "sub__b"
    assert (out / "sub__b" / "result.json").is_file()
    assert {folder: (out / folder / "result.json").stat().st_mtime_ns for folder in stamps} == stamps
    code, stdout, err = segment(capsys, photos, *tiny_args, "--out", out, "--resume")
    assert code == 0 and "nothing to do: all 3 image(s) are already done" in stdout


def test_resume_refuses_other_classes_or_settings_but_not_other_speeds(tmp_path, photos, tiny_args, capsys):
    out = tmp_path / "out"
    assert segment(capsys, photos, *tiny_args, "--out", out)[0] == 0
    (out / "a" / "result.json").unlink()  # one image to do again
    other_classes = [arg if arg != CLASSES else CLASSES + ", lamp" for arg in tiny_args]
    code, _, err = segment(capsys, photos, *other_classes, "--out", out, "--resume")
    assert code == 2 and openseg_lines(err) == [
        f"openseg-r: error: {out} was segmented with other vocabulary; resume with the same options, "
        "or choose another --out"
    ]
    code, _, err = segment(capsys, photos, *tiny_args, "--crop", "32", "--out", out, "--resume")
    assert code == 2 and "other model" in err
    code, stdout, err = segment(
        capsys, photos, *tiny_args, "--batch-size", "1", "--concurrency", "1", "--out", out, "--resume"
    )
    assert code == 0, err
    assert "segmented 1 of 1 image(s)" in stdout


def test_an_existing_index_is_refused_without_resume(tmp_path, photos, tiny_args, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.jsonl").write_text("earlier\n")
    code, stdout, err = segment(capsys, photos, *tiny_args, "--out", out)
    assert code == 2 and "Traceback" not in err
    assert openseg_lines(err) == [
        f"openseg-r: error: {out / 'index.jsonl'} already exists: add --resume to "
        "continue that run, or choose another --out"
    ]
    assert (out / "index.jsonl").read_text() == "earlier\n" and sorted(out.iterdir()) == [out / "index.jsonl"]


@pytest.mark.parametrize("kind", ["empty folder", "glob without a match"])
def test_no_image_at_all_exits_2_with_one_line(kind, tmp_path, tiny_args, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    argument = empty if kind == "empty folder" else tmp_path / "*.jpg"
    code, stdout, err = segment(capsys, argument, *tiny_args, "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith(f"openseg-r: error: no image files found in {argument}")
    assert not (tmp_path / "out").exists()


def test_one_file_writes_straight_into_out(tmp_path, photos, tiny_args, capsys):
    out = tmp_path / "out"
    code, stdout, err = segment(capsys, photos / "a.jpg", *tiny_args, "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["labels.png", "overlay.png", "result.json"]
    assert f"wrote {out / 'labels.png'}" in stdout


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--self-check", "--self-check-mode", "human"], "asks you about one image at a time"),
        (["--trace-jsonl", "trace.jsonl"], "--trace-jsonl writes the step log of one image"),
        (["--concurrency", "0"], "--concurrency must be between 1 and 1024"),
    ],
)
def test_what_many_images_refuse(flags, message, tmp_path, photos, tiny_args, capsys):
    code, stdout, err = segment(capsys, photos, *tiny_args, *flags, "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_resume_with_one_file_is_refused(tmp_path, photos, tiny_args, capsys):
    code, stdout, err = segment(capsys, photos / "a.jpg", *tiny_args, "--resume", "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1 and "--resume continues" in err


def test_each_image_is_a_recorded_run(tmp_path, photos, tiny_args, capsys):
    out, db = tmp_path / "out", tmp_path / "runs.sqlite"
    code, stdout, err = segment(capsys, photos, *tiny_args, "--runs-db", db, "--out", out)
    assert code == 0, err
    run_ids = {line["run_id"] for line in index_lines(out)}
    assert len(run_ids) == 3 and None not in run_ids
    assert cli.main(["runs", "--runs-db", str(db), "list"]) == 0
    listing = capsys.readouterr().out
    assert all(run_id[:12] in listing for run_id in run_ids) and listing.count(" done ") == 3


def test_an_internal_error_fails_that_image_only(monkeypatch, tmp_path, photos, tiny_args, capsys):
    import openseg_r.model

    segment_one = openseg_r.model.OpenSegR.segment

    def explode_on_b(self, image, *args, **kwargs):
        if str(image).endswith("b.png"):
            raise RuntimeError("boom")
        return segment_one(self, image, *args, **kwargs)

    monkeypatch.setattr(openseg_r.model.OpenSegR, "segment", explode_on_b)
    out = tmp_path / "out"
    code, stdout, err = segment(capsys, photos, *tiny_args, "--out", out)
    assert code == 3 and "Traceback" not in err
    assert openseg_lines(err) == [f"openseg-r: skipped {photos / 'sub' / 'b.png'}: internal error: RuntimeError: boom"]
    assert sorted(line["ok"] for line in index_lines(out)) == [False, True, True]


# --------------------------------------------------------------------------- expanding inputs


def test_folders_are_expanded_recursively_in_order_without_the_output_folder(tmp_path, photos):
    (photos / "out" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(photos / "out" / "a" / "overlay.png")  # an earlier run's output
    inputs = expand_inputs([str(photos), str(photos / "a.jpg")], exclude=str(photos / "out"))
    assert inputs.many and inputs.base == str(photos)
    assert inputs.images == [str(photos / "a.jpg"), str(photos / "sub" / "b.png"), str(photos / "sub" / "c.PNG")]
    globbed = expand_inputs([str(photos / "**" / "*.png")], exclude=str(photos / "out"))
    assert globbed.images == [str(photos / "sub" / "b.png")] and globbed.base == str(photos / "sub")
    single = expand_inputs([str(photos / "a.jpg")])
    assert not single.many and single.images == [str(photos / "a.jpg")]
    assert expand_inputs([str(photos / "missing.jpg")]).images == [str(photos / "missing.jpg")]  # fails later


def test_folder_names_are_unique_and_stable():
    base = "/data"
    images = [
        "/data/a/b/cat.jpg",
        "/data/a__b/cat.png",
        "/data/Dog.jpg",
        "/data/dog.JPG",
        "/data/x/bird.jpg",
        "/data/" + "long" * 60 + ".jpg",
    ]
    names = output_names(images, base)
    assert names[:5] == ["a__b__cat_jpg", "a__b__cat_png", "Dog_jpg", "dog_JPG-2", "x__bird"]
    assert len(names[5].encode()) <= 120 and names[5].startswith("longlong")
    assert len({n.casefold() for n in names}) == len(names)
    assert output_names(images, base) == names  # deterministic
    # --resume: an image keeps its earlier folder; names other images had stay theirs
    kept = output_names(
        ["/data/x/bird.jpg", "/data/y.jpg"], base, reserved={"/data/x/bird.jpg": "bird"}, taken={"y", "index.jsonl"}
    )
    assert kept == ["bird", "y-2"]


def test_a_folder_that_cannot_be_written_fails_that_image_only(tmp_path, photos, tiny_args, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("a file where the folder of a.jpg would go")
    code, stdout, err = segment(capsys, photos, *tiny_args, "--out", out)
    assert code == 3 and "Traceback" not in err
    assert openseg_lines(err) == [f"openseg-r: skipped {photos / 'a.jpg'}: could not write {out / 'a'}: File exists"]
    assert sorted((line["image"], line["ok"]) for line in index_lines(out))[0] == (str(photos / "a.jpg"), False)


def test_an_interrupted_run_keeps_what_it_finished_and_resumes(monkeypatch, tmp_path, photos, tiny_args, capsys):
    import openseg_r.model

    segment_one = openseg_r.model.OpenSegR.segment

    def interrupted_at_c(self, image, *args, **kwargs):
        if str(image).endswith("c.PNG"):
            raise KeyboardInterrupt
        return segment_one(self, image, *args, **kwargs)

    monkeypatch.setattr(openseg_r.model.OpenSegR, "segment", interrupted_at_c)
    out = tmp_path / "out"
    code, stdout, err = segment(capsys, photos, *tiny_args, "--concurrency", "1", "--out", out)
    assert code == 130 and err.splitlines()[-1] == "openseg-r: interrupted" and "Traceback" not in err
    assert [line["image"] for line in index_lines(out)] == [str(photos / "a.jpg"), str(photos / "sub" / "b.png")]
    monkeypatch.setattr(openseg_r.model.OpenSegR, "segment", segment_one)
    code, stdout, err = segment(capsys, photos, *tiny_args, "--out", out, "--resume")
    assert code == 0 and "segmented 1 of 1 image(s) (0 failed, 2 already done)" in stdout
    assert [line["image"] for line in index_lines(out)][-1] == str(photos / "sub" / "c.PNG")
