"""The structure the code promises: the runtime context's protocols let a segmenter that
shares no code with the CLIP one run the whole graph; modules do not reach into each
other's private names; the design document the code cites is in the repository."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pytest

from openseg_r import OpenSegR
from openseg_r._support.cache import MemoryReasoningCache, SQLiteReasoningCache
from openseg_r.errors import ConfigError
from openseg_r.lmm import NoLMM, ScriptedLMM
from openseg_r.nodes.context import LMMBackend, OpenSegContext, ReasoningCache
from openseg_r.schemas import PromptSet
from openseg_r.segmenters.base import ClassFilter, EmbedsNames, SegmentationArrays, Segmenter

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "openseg_r"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
STALE_PHRASES = ("DESIGN" + " §", "not built" + " yet")  # a design brief outside the repo; old placeholders


class BandSegmenter:
    """A segmenter that shares nothing with CLIPSegmenter (no subclass, no torch): the
    image's rows are split into one horizontal band per class the filter keeps. It
    records what the graph handed it, so a test can see the prompts and the filter."""

    def __init__(self) -> None:
        self.banks: list[PromptSet] = []
        self.filters: list[ClassFilter] = []

    def query_bank(self, prompts: PromptSet) -> PromptSet:
        self.banks.append(prompts)
        return prompts

    def segment(
        self,
        rgb,
        bank,
        *,
        class_filter=None,
        logit_scale=40.0,
        background_index=None,
        background_threshold=0.0,
        image_key=None,
    ) -> SegmentationArrays:
        class_filter = class_filter or ClassFilter()
        self.filters.append(class_filter)
        num_classes = len(bank.classes)
        suppressed = class_filter.suppressed(num_classes)
        kept = [c for c in range(num_classes) if c not in suppressed]
        height, width = rgb.shape[:2]
        band = (np.arange(height) * len(kept)) // height
        labels = np.repeat(np.asarray(kept, np.int32)[band][:, None], width, axis=1)
        runner_up = np.where(labels == kept[0], kept[-1], kept[0]).astype(np.int32)
        return SegmentationArrays(
            labels=labels,
            confidence=np.full((height, width), 0.8, np.float32),
            runner_up=runner_up,
            margin=np.full((height, width), 0.6, np.float32),
            runner_up_confidence=np.full((height, width), 0.2, np.float32),
            suppressed=suppressed,
        )

    def describe(self) -> dict:
        return {"segmenter": "bands"}


def test_a_second_segmenter_runs_the_whole_graph(voc):
    segmenter = BandSegmenter()
    assert isinstance(segmenter, Segmenter) and not isinstance(segmenter, EmbedsNames)
    model = OpenSegR(segmenter=segmenter, lmm=ScriptedLMM(json.loads(SCRIPT.read_text())))
    result = model.segment(voc["rgb"], "voc21")

    # every node ran, reasoning reached the segmenter as composed prompts
    nodes = [t.node for t in result.state.timings]
    assert nodes[-3:] == ["prompt_composition", "segmentation", "finalize"]
    assert {"generic_reasoning", "image_reasoning", "class_alignment"} <= set(nodes)
    phrases = [p for c in segmenter.banks[0].classes for row in c.phrases() for p in row]
    assert any(" that has " in p for p in phrases)
    # the class filter it was given is image reasoning's, and the result is its bands
    present = result.state.alignment.present
    assert present and len(present) < 20
    names = result.names
    kept = sorted({names.index(n) for n in present} | {0})
    assert segmenter.filters[0].present == sorted(names.index(n) for n in present)
    assert sorted(np.unique(result.labels).tolist()) == kept
    assert result.state.segmentation.suppressed_classes == [n for i, n in enumerate(names) if i not in kept]
    assert result.to_json()["segmenter"] == {"kind": "unregistered:BandSegmenter", "segmenter": "bands"}
    assert result.classes[kept[1]].pixels > 0


def test_a_second_segmenter_runs_without_an_lmm_and_with_the_self_check_off(voc):
    result = OpenSegR(segmenter=BandSegmenter(), lmm="none").segment(voc["rgb"], ["cat", "dog", "sofa"])
    assert sorted(np.unique(result.labels).tolist()) == [0, 1, 2]
    assert result.state.settings.reasoning is False


def test_something_that_is_not_a_segmenter_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="not a segmenter") as caught:
        OpenSegR(segmenter=object(), lmm="none")
    assert "\n" not in str(caught.value)


def test_the_shipped_implementations_satisfy_the_protocols(tiny_segmenter, tmp_path):
    assert isinstance(tiny_segmenter, Segmenter) and isinstance(tiny_segmenter, EmbedsNames)
    assert isinstance(ScriptedLMM({}), LMMBackend) and isinstance(NoLMM(), LMMBackend)
    assert isinstance(MemoryReasoningCache(), ReasoningCache)
    assert isinstance(SQLiteReasoningCache(tmp_path / "cache.sqlite"), ReasoningCache)
    assert not isinstance(object(), LMMBackend)


def test_the_aligner_falls_back_to_the_segmenter_text_side_only_when_it_has_one(tiny_segmenter):
    assert OpenSegContext(segmenter=BandSegmenter()).name_embedder() is None
    assert OpenSegContext(segmenter=tiny_segmenter).name_embedder() == tiny_segmenter.embed_names
    own = lambda names: np.eye(len(names))  # noqa: E731
    assert OpenSegContext(segmenter=tiny_segmenter, aligner=own).name_embedder() is own


# --------------------------------------------------------------------------- source rules


def _python_files():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_imports_a_private_name_from_another():
    crossings = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("openseg_r"):
                crossings += [
                    f"{path.relative_to(ROOT)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert crossings == []


def test_the_design_document_is_in_the_repository_and_every_citation_resolves():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,4} (\d+(?:\.\d+)*)[ .]", design, flags=re.MULTILINE))
    cited = []
    guides = [p for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "design.md"]
    for path in [*_python_files(), *sorted((ROOT / "tests").glob("*.py")), ROOT / "README.md", *guides]:
        text = path.read_text(encoding="utf-8")
        for stale in STALE_PHRASES:
            assert stale not in text, (path, stale)
        for first, last in re.findall(r"docs/design\.md §(\d+(?:\.\d+)*)(?:[–-](\d+(?:\.\d+)*))?", text):
            cited += [(path.name, number) for number in (first, last) if number]
    assert cited, "the code cites the design document"
    missing = sorted({(name, number) for name, number in cited if number not in sections})
    assert missing == []


def test_the_graph_and_the_command_line_parser_load_without_torch():
    """The nodes and the context depend on protocols, so only a segmenter brings torch in;
    `openseg-r --help` and `graph --mermaid` stay fast."""
    import subprocess
    import sys

    probe = (
        "import sys, openseg_r.graph, openseg_r.nodes.context, openseg_r.cli; openseg_r.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
