"""Segmenters by name: the registry, the entry-point plugins, and every entry point building
through it (the command line, MCP, the web app, Ray, replay, the LangGraph app).

The plugin is a real distribution on disk (tests/plugins: a package and its .dist-info with
an ``openseg_r.segmenters`` entry point), found the way pip-installed plugins are found:
by importlib.metadata scanning sys.path.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openseg_r import OpenSegR
from openseg_r.cli.main import main
from openseg_r.config.options import ModelOptions
from openseg_r.errors import ConfigError
from openseg_r.runs.database import RunsDB
from openseg_r.segmenters import registry
from openseg_r.segmenters.dense_clip.options import ATTENTION_VARIANTS, DenseCLIPOptions

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "plugins"
PHOTO = ROOT / "examples" / "voc.jpg"


def plugin_env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", LANGSMITH_TRACING="false", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        env[name] = str(tmp_path / name.lower())
    return env


def cli(tmp_path: Path, *args: str, plugin: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = plugin_env(tmp_path) if plugin else {k: v for k, v in plugin_env(tmp_path).items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=tmp_path,
    )


@pytest.fixture
def with_plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    yield
    sys.modules.pop("toy_bands_segmenter", None)


# --------------------------------------------------------------------------- the registry


def test_segmenters_lists_dense_clip_with_its_variants_options_and_defaults(capsys):
    assert main(["segmenters"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dense-clip (default): ")
    assert f"attention variants: {', '.join(ATTENTION_VARIANTS)}" in out
    for name, field in DenseCLIPOptions.model_fields.items():
        assert f"  {name} = " in out and field.description in out
    assert main(["segmenters", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    dense = next(k for k in listed["kinds"] if k["kind"] == "dense-clip")
    assert listed["default"] == "dense-clip" and dense["variants"]["attention"] == list(ATTENTION_VARIANTS)
    defaults = {o["name"]: o["default"] for o in dense["options"]}
    assert defaults["attention"] == "naclip" and defaults["clip_model"] == DenseCLIPOptions().clip_model
    assert {o["name"] for o in dense["options"] if o["speed_only"]} == {"window_batch_size", "compile"}


def test_listing_kinds_never_imports_torch():
    code = "import sys; from openseg_r.cli.main import main; main(['segmenters']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("False"), done.stderr


def test_a_plugin_is_found_through_its_entry_point(with_plugin, capsys):
    kind = registry.get_kind("toy-bands")
    assert kind.origin == "plugin: toy-bands-segmenter 0.1"
    assert list(registry.kinds()) == [*registry.BUILT_IN, "toy-bands"]  # built in first, then plugins
    assert main(["segmenters"]) == 0
    out = capsys.readouterr().out
    assert "toy-bands: brightness bands (a test plugin) [plugin: toy-bands-segmenter 0.1]" in out
    assert "  sharpness = 8.0  how sharply a band's score falls off" in out


def test_a_built_in_name_cannot_be_taken_over_and_a_broken_plugin_is_named_when_chosen(tmp_path, monkeypatch):
    info = tmp_path / "bad_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[openseg_r.segmenters]\ndense-clip = no_such_module:KIND\nmissing = no_such_module:KIND\n"
        "not-a-kind = json:dumps\nlazy = lazy_kind:KIND\n"
    )
    (tmp_path / "lazy_kind.py").write_text(  # a kind that lists, but whose factory moved away
        "from pydantic import BaseModel\nfrom openseg_r import SegmenterKind\n"
        "class Options(BaseModel):\n    pass\n"
        "KIND = SegmenterKind(name='lazy', summary='lazy', options=Options, build='gone_module:build')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry.get_kind("dense-clip") is registry.BUILT_IN["dense-clip"]
    for name, words in (("missing", "does not load: ModuleNotFoundError"), ("not-a-kind", "is not a SegmenterKind")):
        with pytest.raises(ConfigError) as caught:
            registry.get_kind(name)
        assert "\n" not in str(caught.value) and words in str(caught.value) and "broken" in str(caught.value)
    listed = {k["kind"]: k["summary"] for k in registry.describe_kinds()}
    assert listed["missing"].startswith("broken: ") and "dense-clip" in listed  # the others still list
    assert listed["lazy"] == "lazy"
    with pytest.raises(ConfigError) as caught:
        OpenSegR(segmenter="lazy", lmm="none")
    assert "\n" not in str(caught.value) and "the lazy segmenter cannot be built: gone_module:build" in str(
        caught.value
    )
    sys.modules.pop("lazy_kind", None)


@pytest.mark.parametrize(
    "values, words",
    [
        ({"segmenter": "no-such-kind"}, "unknown segmenter 'no-such-kind'; known: dense-clip"),
        ({"segmenter_options": {"colour": "red"}}, "unknown option 'colour' for the dense-clip segmenter"),
        ({"attention": "magic"}, "invalid dense-clip segmenter option: attention"),
        ({"sharpness": 2}, "unknown option 'sharpness': the options are ModelOptions' fields"),
    ],
)
def test_bad_kinds_and_options_are_one_line(values, words):
    with pytest.raises(ConfigError) as caught:
        ModelOptions.build(**values)
    assert "\n" not in str(caught.value) and words in str(caught.value)


def test_a_plugins_options_are_its_own(with_plugin):
    options = ModelOptions.build(segmenter="toy-bands", segmenter_options={"sharpness": "2.5"})
    assert options.segmenter_options.sharpness == 2.5 and options.segmenter_options.invert is False
    with pytest.raises(ConfigError, match="unknown option 'attention': .* the toy-bands segmenter's"):
        options.with_overrides(attention="sclip")
    # another kind starts from that kind's defaults, not from the old kind's options
    assert options.with_overrides(segmenter="dense-clip").segmenter_options == DenseCLIPOptions()
    recorded = json.loads(json.dumps(options.recorded()))
    assert recorded["segmenter"] == "toy-bands" and recorded["segmenter_options"]["sharpness"] == 2.5
    assert ModelOptions.from_recorded(recorded) == options


def test_the_config_files_segmenter_table_sets_the_kind_and_flags_win(with_plugin, tmp_path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text('[segmenter]\nkind = "toy-bands"\nsharpness = 2.0\n')
    monkeypatch.setenv("OPENSEG_R_CONFIG", str(config))
    options = ModelOptions()
    assert options.segmenter == "toy-bands" and options.segmenter_options.sharpness == 2.0
    flagged = ModelOptions.build(segmenter_options={"invert": True})
    assert flagged.segmenter_options.sharpness == 2.0 and flagged.segmenter_options.invert is True
    assert ModelOptions.build(segmenter="dense-clip").segmenter_options == DenseCLIPOptions()  # another kind
    config.write_text('segmenter = "toy-bands"\n')
    with pytest.raises(ConfigError, match=r"must be a \[segmenter\] table"):
        ModelOptions()


def test_openseg_r_takes_options_and_keywords_and_builds_through_the_registry(with_plugin, voc):
    model = OpenSegR(segmenter="toy-bands", sharpness=3.0, lmm="none")
    assert type(model.segmenter).__name__ == "ToyBandsSegmenter" and model.segmenter.options.sharpness == 3.0
    result = model.segment(voc["rgb"], ["cat", "sofa"])
    assert result.to_json()["segmenter"] == {"kind": "toy-bands", "sharpness": 3.0, "invert": False, "device": "cpu"}
    same = OpenSegR(ModelOptions.build(segmenter="toy-bands", segmenter_options={"sharpness": 3.0}), lmm="none")
    assert np.array_equal(same.segment(voc["rgb"], ["cat", "sofa"]).labels, result.labels)
    with pytest.raises(ConfigError) as caught:
        OpenSegR(segmenter="toy-bands", attention="sclip", lmm="none")
    assert "\n" not in str(caught.value) and "unknown option 'attention'" in str(caught.value)


def test_the_langgraph_app_reads_the_kind_from_the_environment(with_plugin):
    options = ModelOptions.from_environment({"OPENSEG_R_SEGMENTER": "toy-bands"})
    assert options.segmenter == "toy-bands"
    dense = ModelOptions.from_environment({"OPENSEG_R_CLIP_MODEL": "ViT-L-14", "OPENSEG_R_ATTENTION": "sclip"})
    assert (dense.segmenter_options.clip_model, dense.segmenter_options.attention) == ("ViT-L-14", "sclip")


def test_a_published_protocol_is_never_applied_to_another_kind(with_plugin, capsys):
    from openseg_r.cli.evaluate import dataset_protocol
    from openseg_r.config.presets import protocol_for
    from openseg_r.config.settings import Settings

    toy = ModelOptions.build(segmenter="toy-bands")
    with pytest.raises(ConfigError) as caught:
        protocol_for("voc21").apply(toy, Settings())
    assert "\n" not in str(caught.value) and "the naclip-voc21 protocol holds dense-clip settings" in str(caught.value)
    assert dataset_protocol("voc21", None, kind="toy-bands") is None  # eval's default: its own options, said
    assert "runs with its own options" in capsys.readouterr().err
    assert dataset_protocol("voc21", None, kind="dense-clip") is protocol_for("voc21")
    applied, _ = protocol_for("voc21").apply(ModelOptions(), Settings())
    assert applied.segmenter_options.pamr_steps == 10


# --------------------------------------------------------------------------- every entry point


def test_cli_segments_with_a_plugin_and_replay_rebuilds_it(tmp_path):
    done = cli(
        tmp_path,
        "segment",
        str(PHOTO),
        "--classes",
        "cat, sofa, floor",
        "--segmenter",
        "toy-bands",
        "--segmenter-option",
        "sharpness=3",
        "--runs-db",
        "runs.sqlite",
        "--out",
        "out",
    )
    assert done.returncode == 0, done.stderr
    first = json.loads((tmp_path / "out" / "result.json").read_text())
    assert first["segmenter"] == {"kind": "toy-bands", "sharpness": 3.0, "invert": False, "device": "cpu"}
    db = RunsDB(tmp_path / "runs.sqlite")
    (record,) = db.list_runs()
    db.close()
    assert record.options["segmenter"] == "toy-bands" and record.options["segmenter_options"]["sharpness"] == 3.0
    replay_from_segmentation = ["runs", "--runs-db", "runs.sqlite", "replay", record.run_id, "--from", "segmentation"]
    replay = cli(tmp_path, *replay_from_segmentation, "--out", "replayed")
    assert replay.returncode == 0, replay.stderr
    again = json.loads((tmp_path / "replayed" / "result.json").read_text())
    assert again["segmenter"] == first["segmenter"]
    labels = [np.asarray(Image.open(tmp_path / folder / "labels.png")) for folder in ("out", "replayed")]
    assert np.array_equal(*labels)
    # without the plugin installed, replay says so in one line instead of building something else
    missing = cli(
        tmp_path,
        *replay_from_segmentation,
        "--out",
        "elsewhere",
        plugin=False,
    )
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "unknown segmenter 'toy-bands'" in missing.stderr and not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--segmenter", "toy-bandz"], "unknown segmenter 'toy-bandz'; known: dense-clip, proxyclip, sam3, toy-bands"),
        (
            ["--segmenter", "toy-bands", "--attention", "sclip"],
            "unknown option 'attention' for the toy-bands segmenter",
        ),
        (["--segmenter", "toy-bands", "--segmenter-option", "sharpness=-1"], "invalid toy-bands segmenter option"),
        (["--segmenter-option", "sharpness"], "--segmenter-option takes key=value"),
        (["--segmenter", "toy-bands", "--protocol", "voc21"], "holds dense-clip settings"),
    ],
)
def test_cli_refuses_bad_segmenter_choices_in_one_line(tmp_path, args, words):
    done = cli(tmp_path, "segment", str(PHOTO), "--classes", "cat", *args, "--out", "out")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_the_built_in_kind_by_name_is_what_the_clip_flags_build(tmp_path, tiny_model_files):
    config, weights = tiny_model_files
    common = ["segment", str(PHOTO), "--classes", "cat, sofa", "--clip-pretrained", str(weights)]
    by_flags = cli(tmp_path, *common, "--clip-model", str(config), "--out", "flags")
    by_name = cli(
        tmp_path,
        *common,
        "--segmenter",
        "dense-clip",
        "--segmenter-option",
        f"clip_model={config}",
        "--segmenter-option",
        "attention=naclip",
        "--out",
        "named",
    )
    assert by_flags.returncode == by_name.returncode == 0, by_flags.stderr + by_name.stderr
    labels = [np.asarray(Image.open(tmp_path / folder / "labels.png")) for folder in ("flags", "named")]
    assert np.array_equal(*labels)
    described = json.loads((tmp_path / "named" / "result.json").read_text())["segmenter"]
    assert described["kind"] == "dense-clip" and described["weights"].endswith(f"|{weights}")


def test_replay_of_an_injected_unregistered_segmenter_is_refused_in_one_line(tmp_path, voc, capsys):
    from test_architecture import BandSegmenter

    db = RunsDB(tmp_path / "runs.sqlite")
    run_id = OpenSegR(segmenter=BandSegmenter(), lmm="none", runs_db=db).segment(voc["rgb"], ["cat", "dog"]).run_id
    db.close()
    code = main(["runs", "--runs-db", str(tmp_path / "runs.sqlite"), "replay", run_id, "--from", "segmentation"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "injected segmenter (BandSegmenter)" in err and "cannot be built again" in err


def test_mcp_serves_a_plugin_segmenter(tmp_path):
    from mcp import Client, StdioServerParameters

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "voc.jpg").write_bytes(PHOTO.read_bytes())
    args = [
        "-m",
        "openseg_r.cli",
        "serve",
        "mcp",
        "--segmenter",
        "toy-bands",
        "--segmenter-option",
        "sharpness=3",
        "--lmm",
        "none",
        "--root",
        str(tmp_path / "images"),
    ]
    params = StdioServerParameters(command=sys.executable, args=args, env=plugin_env(tmp_path))

    async def run():
        async with Client(params) as client:
            result = await client.call_tool(
                "segment", {"image_path": "voc.jpg", "vocabulary": ["cat", "sofa"], "reasoning": False}
            )
            assert not result.is_error, result.content
            return result.structured_content

    structured = asyncio.run(run())
    assert structured["segmenter"] == "toy-bands" and structured["width"] == 500


def test_serve_web_builds_the_plugin_segmenter(with_plugin, monkeypatch, tmp_path):
    from openseg_r.tools.web import server

    pages = []
    monkeypatch.setattr(server, "serve_web", lambda web, listening, on_ready: pages.append(web))
    code = main(
        [
            "serve",
            "web",
            "--segmenter",
            "toy-bands",
            "--segmenter-option",
            "invert=true",
            "--lmm",
            "none",
            "--port",
            "0",
        ]
    )
    assert code == 0 and len(pages) == 1
    service = pages[0].service  # what the page segments with
    assert service.model.segmenter.options.invert is True
    request = {
        "image_base64": base64.b64encode(PHOTO.read_bytes()).decode(),
        "vocabulary": ["cat", "sofa"],
        "reasoning": False,
    }
    output, _ = service.segment(request)
    assert output.segmenter == "toy-bands"


def test_ray_segments_with_a_plugin_segmenter(tmp_path):
    pytest.importorskip("ray")
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (images / name).write_bytes(PHOTO.read_bytes())
    common = [
        "segment",
        str(images),
        "--classes",
        "cat, sofa",
        "--segmenter",
        "toy-bands",
        "--segmenter-option",
        "sharpness=3",
    ]
    local = cli(tmp_path, *common, "--out", "local")
    on_ray = cli(tmp_path, *common, "--out", "ray", "--engine", "ray", "--actors", "1", timeout=600)
    assert local.returncode == on_ray.returncode == 0, local.stderr + on_ray.stderr[-2000:]
    for name in ("a", "b"):
        described = json.loads((tmp_path / "ray" / name / "result.json").read_text())["segmenter"]
        assert described["kind"] == "toy-bands" and described["sharpness"] == 3.0
        labels = [np.asarray(Image.open(tmp_path / out / name / "labels.png")) for out in ("local", "ray")]
        assert np.array_equal(*labels)
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["model"]["segmenter"] == "toy-bands"


# --------------------------------------------------------------------------- defaults live in one place

ENTRY_POINT_CODE = ["openseg_r/model.py", "openseg_r/cli", "openseg_r/tools", "openseg_r/distributed"]


def _defaults_written_again() -> list[str]:
    """Parameters of the entry points' functions named after a ModelOptions field or a segmenter
    kind's option that carry a default of their own (other than None, "not given")."""
    names = set(ModelOptions.model_fields) | {n for k in registry.BUILT_IN.values() for n in k.options.model_fields}
    found = []
    for place in ENTRY_POINT_CODE:
        path = ROOT / place
        for source in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                for arg, default in pairs:
                    if arg.arg in names and not (isinstance(default, ast.Constant) and default.value is None):
                        found.append(
                            f"{source.relative_to(ROOT)}:{node.lineno} {node.name}({arg.arg}={ast.unparse(default)})"
                        )
    return found


def test_no_entry_point_writes_an_options_default_a_second_time():
    assert _defaults_written_again() == []


def test_the_defaults_check_finds_a_default_written_twice(tmp_path, monkeypatch):
    planted = tmp_path / "openseg_r" / "tools"
    planted.mkdir(parents=True)
    (planted / "planted.py").write_text("def serve(batch_size: int = 8, lmm=None):\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _defaults_written_again() == ["openseg_r/tools/planted.py:1 serve(batch_size=8)"]
