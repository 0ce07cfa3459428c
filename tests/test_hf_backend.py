"""The local transformers backend on real models: SmolLM2 from its GGUF file, and a
tiny random Qwen2.5-VL built from a config."""

from __future__ import annotations

import numpy as np
import pytest
from langgraph.runtime import Runtime

from openseg_r.context import OpenSegContext
from openseg_r.lmm import LMMRequest
from openseg_r.lmm.hf_local import HuggingFaceLMM
from openseg_r.nodes import GenericReasoningInput, ImageReasoningInput, generic_reasoning, image_reasoning
from openseg_r.state import ClassReasoning, ImageReasoning, ImageRef
from openseg_r.store import ArtifactStore
from openseg_r.vocab import parse_class_list


@pytest.fixture(scope="module")
def smollm(smollm_gguf):
    return HuggingFaceLMM(str(smollm_gguf), max_new_tokens=96)


def test_smollm2_generic_reasoning_is_valid_or_a_recorded_fallback(smollm):
    assert smollm.supports_images is False and smollm.model_id.endswith(".gguf")
    vocab = parse_class_list("cat, bicycle, sofa")
    out = generic_reasoning(GenericReasoningInput(vocabulary=vocab), Runtime(context=OpenSegContext(lmm=smollm)))
    fallen = {f.subject for f in out.fallbacks}
    for name in vocab.names:
        reasoning = out.generic_reasoning[name]
        assert isinstance(reasoning, ClassReasoning) and reasoning.name == name
        if name in fallen:
            assert reasoning.attributes == []  # the stated fallback: the bare class name
        else:
            assert any(call.ok and call.subject == name for call in out.lmm_calls)
    for call in out.lmm_calls:
        assert call.raw_text == "" or isinstance(call.raw_text, str)
        assert call.usage.prompt_tokens > 20 and 0 < call.usage.completion_tokens <= 96
        assert call.ok or call.error


def test_generation_is_deterministic(smollm):
    request = LMMRequest(step="generic_reasoning", subject="cat", prompt="Name a colour.", prompt_version="t",
                         schema=ClassReasoning)
    assert smollm.complete(request) == smollm.complete(request)


def test_text_model_refuses_images_and_the_node_falls_back(smollm):
    store = ArtifactStore()
    rgb = np.zeros((32, 32, 3), np.uint8)
    state = ImageReasoningInput(image=ImageRef(key=store.put(rgb), width=32, height=32),
                                vocabulary=parse_class_list("cat"))
    out = image_reasoning(state, Runtime(context=OpenSegContext(lmm=smollm, store=store)))
    assert out.image_reasoning is None
    assert "cannot look at images" in out.fallbacks[0].reason


def test_vision_language_model_code_path(tiny_vlm_dir):
    vlm = HuggingFaceLMM(str(tiny_vlm_dir), max_new_tokens=12)
    assert vlm.supports_images is True
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with_image = LMMRequest(step="image_reasoning", prompt="Describe.", prompt_version="t", schema=ImageReasoning,
                            images=[rgb])
    text_only = LMMRequest(step="image_reasoning", prompt="Describe.", prompt_version="t", schema=ImageReasoning)
    answer, usage = vlm.complete(with_image)
    _, text_usage = vlm.complete(text_only)
    assert isinstance(answer, str) and usage.completion_tokens <= 12
    assert usage.prompt_tokens > text_usage.prompt_tokens  # the image went in as image tokens
    assert vlm.complete(with_image) == (answer, usage)  # greedy decoding is deterministic
    reply = vlm.ask(with_image)  # random weights: gibberish, which must end as a stated failure
    assert reply.value is not None or (reply.error and len(reply.calls) == vlm.max_attempts)
