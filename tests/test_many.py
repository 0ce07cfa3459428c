"""Many images at once: segment_many, the micro-batcher, the shared LMM limit, single flight."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from openseg_r import OpenSegR
from openseg_r._support.flights import SingleFlight
from openseg_r.errors import ConfigError
from openseg_r.lmm import ScriptedLMM
from openseg_r.segmenters.batching import MicroBatcher

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "voc_reasoning.json"
VOCAB = ["person", "chair", "diningtable", "bottle"]


def _images(rng, count):
    return [rng.integers(0, 255, (60 + 8 * i, 90, 3), dtype=np.uint8) for i in range(count)]


def test_segment_many_returns_each_image_in_input_order_like_segment(tiny_segmenter, rng, tmp_path):
    images = _images(rng, 5)
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not an image at all")
    model = OpenSegR(segmenter=tiny_segmenter, lmm="none", batch_size=4)
    outcomes = model.segment_many(
        [images[0], images[1], str(corrupt), images[2], images[3], images[4]], VOCAB, concurrency=3
    )
    assert [o.index for o in outcomes] == list(range(6))
    assert [o.ok for o in outcomes] == [True, True, False, True, True, True]
    assert outcomes[2].source == str(corrupt) and "\n" not in outcomes[2].error
    alone = OpenSegR(segmenter=tiny_segmenter, lmm="none", batch_size=1)
    for outcome, rgb in zip([o for o in outcomes if o.ok], images):
        assert np.array_equal(outcome.result.labels, alone.segment(rgb, VOCAB).labels)


def test_asegment_many_is_the_same_from_asyncio(tiny_segmenter, rng):
    images = _images(rng, 3)
    model = OpenSegR(segmenter=tiny_segmenter, lmm="none")
    outcomes = asyncio.run(model.asegment_many(images, VOCAB, concurrency=2, names=["a", "b", "c"]))
    assert [o.source for o in outcomes] == ["a", "b", "c"] and all(o.ok for o in outcomes)


def test_segment_many_refuses_human_mode_and_bad_concurrency(tiny_segmenter, rng):
    model = OpenSegR(segmenter=tiny_segmenter, lmm="none")
    with pytest.raises(ConfigError, match="human"):
        model.segment_many(_images(rng, 1), VOCAB, self_check={"enabled": True, "mode": "human"})
    with pytest.raises(ConfigError, match="concurrency"):
        model.segment_many(_images(rng, 1), VOCAB, concurrency=0)


class CursedSegmenter:
    """Wraps a segmenter, records each batch's size, and fails any image 77 pixels high."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[int] = []

    def query_bank(self, prompts):
        return self.inner.query_bank(prompts)

    def describe(self):
        return self.inner.describe()

    def segment(self, rgb, bank, **kw):
        raise AssertionError("the batcher should call segment_batch")

    def segment_batch(self, jobs):
        self.batches.append(len(jobs))
        if any(job.rgb.shape[0] == 77 for job in jobs):
            raise ValueError("image 77 is cursed")
        return self.inner.segment_batch(jobs)


def test_concurrent_runs_share_forward_passes_and_a_failure_stays_with_its_image(tiny_segmenter, rng):
    cursed = CursedSegmenter(tiny_segmenter)
    model = OpenSegR(segmenter=cursed, lmm="none", batch_size=8, batch_wait_ms=5_000)
    images = _images(rng, 4)
    images[2] = rng.integers(0, 255, (77, 90, 3), dtype=np.uint8)
    outcomes = model.segment_many(images, VOCAB, concurrency=4)
    # All four runs were in flight, so the first pass waited for all four; it failed, and
    # each image was run again alone to find whose failure it was.
    assert cursed.batches == [4, 1, 1, 1, 1]
    assert [o.ok for o in outcomes] == [True, True, False, True]
    assert "cursed" in outcomes[2].error
    assert model.batcher.batch_sizes == {4: 1}


def test_a_lone_run_does_not_wait_for_a_batch(tiny_segmenter, rng):
    model = OpenSegR(segmenter=tiny_segmenter, lmm="none", batch_size=8, batch_wait_ms=5_000)
    started = time.monotonic()
    model.segment(_images(rng, 1)[0], VOCAB)
    assert time.monotonic() - started < 4  # it would wait 5 s if it waited for companions
    assert model.batcher.batch_sizes == {1: 1}


def test_micro_batcher_needs_a_batching_segmenter():
    with pytest.raises(TypeError, match="segment_batch"):
        MicroBatcher(object())


class CountingLMM(ScriptedLMM):
    """Scripted answers after a delay; counts calls per step and the most in flight at once."""

    def __init__(self, delay):
        super().__init__(json.loads(SCRIPT.read_text()))
        self.delay, self.in_flight, self.most = delay, 0, 0
        self.count_lock = threading.Lock()

    def complete(self, request, feedback=None):
        with self.count_lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(self.delay)
            return super().complete(request, feedback)
        finally:
            with self.count_lock:
                self.in_flight -= 1


def test_concurrent_images_ask_generic_reasoning_once_per_class(tiny_segmenter, rng):
    lmm = CountingLMM(delay=0.2)
    model = OpenSegR(segmenter=tiny_segmenter, lmm=lmm)
    outcomes = model.segment_many(_images(rng, 4), VOCAB, concurrency=4)
    assert all(o.ok for o in outcomes)
    steps = [r.step for r in lmm.requests]
    assert steps.count("generic_reasoning") == len(VOCAB)  # not once per image
    assert steps.count("image_reasoning") == 4
    recorded = sum(c.step == "generic_reasoning" for o in outcomes for c in o.result.state.lmm_calls)
    assert recorded == len(VOCAB)  # the runs that waited record no call of their own
    for outcome in outcomes:  # and yet every image got the reasoning
        assert set(outcome.result.state.generic_reasoning) == set(VOCAB)
        assert all(r.attributes for r in outcome.result.state.generic_reasoning.values())


@pytest.mark.parametrize("limit", [1, 3])
def test_lmm_calls_of_all_runs_stay_within_the_models_limit(tiny_segmenter, rng, limit):
    lmm = CountingLMM(delay=0.15)
    model = OpenSegR(segmenter=tiny_segmenter, lmm=lmm, lmm_concurrency=limit)
    model.segment_many(_images(rng, 6), ["person", "chair"], concurrency=6)
    assert lmm.most == limit  # reached (the calls overlap) and never passed


def test_single_flight_shares_one_computation_and_forgets_failures():
    flights = SingleFlight()
    calls, gate = [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(5)
        return "answer"

    results = []
    threads = [threading.Thread(target=lambda: results.append(flights.run("k", slow))) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(shared for _, shared in results) == [False, True, True, True, True]
    assert flights.run("k", lambda: "again") == ("answer", True)  # landed: remembered
    with pytest.raises(RuntimeError):
        flights.run("bad", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert flights.run("bad", lambda: "fine") == ("fine", False)  # an error is not remembered
    assert flights.run("none", lambda: None) == (None, False)
    assert flights.run("none", lambda: "later") == ("later", False)  # keep() said no: asked again


def test_concurrent_service_calls_share_forward_passes(tiny_segmenter, tmp_path):
    """The agents' service (behind the MCP and LangGraph servers) runs concurrent calls
    through the model's micro-batcher."""
    from PIL import Image

    from openseg_r.tools.safety import SafetyLimits
    from openseg_r.tools.service import SegmentationService

    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = OpenSegR(segmenter=tiny_segmenter, lmm="none", batch_size=4, batch_wait_ms=5_000)
    # Wait for all four whatever the runs in flight say: on a loaded machine the first call can
    # reach the batcher before the others have started, and the batcher rightly goes alone.
    model.batcher.expected_callers = lambda: 4
    service = SegmentationService(model, SafetyLimits(allowed_roots=[tmp_path], max_concurrent=4))
    outputs = [None] * 4

    def call(i):
        outputs[i] = service.segment({"image_path": f"{i}.png", "vocabulary": ["cat", "dog"], "reasoning": False})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(output is not None for output in outputs)
    assert model.batcher.batch_sizes == {4: 1}  # one forward pass for the four calls
