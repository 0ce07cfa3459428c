"""No single call can take the server (issue 13, A): text lookups never wait for another
call's encoding, abandoned work stops at its next batch, a vocabulary's text cost is
capped up front, and SIGINT/SIGTERM stop the server in the middle of a long call."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from loopback import free_port, wait_until_listening

from openseg_r import OpenSegR
from openseg_r._support.cancel import Cancelled, CancelToken, cancellable, result_unless_cancelled
from openseg_r.config.settings import Settings
from openseg_r.schemas import ClassPrompts, PromptSet
from openseg_r.segmenters.base import SegmentJob
from openseg_r.segmenters.batching import MicroBatcher
from openseg_r.segmenters.dense_clip import CLIPSegmenter, SegmenterConfig
from openseg_r.segmenters.dense_clip import text as text_module
from openseg_r.segmenters.dense_clip.loading import load_clip
from openseg_r.segmenters.dense_clip.text import TextEmbedder, templates_for
from openseg_r.segmenters.text_cache import open_text_cache
from openseg_r.tools.safety import SafetyLimits, ToolInputError
from openseg_r.tools.service import SegmentationService
from openseg_r.vocab import load_builtin, parse_class_list

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
TEMPLATES = len(templates_for("vild"))
PER_BATCH = text_module.TEXT_BATCH // TEMPLATES  # phrases per text batch
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", LANGSMITH_TRACING="false")


def fresh_clip(tiny_model_files):
    config, weights = tiny_model_files
    return load_clip(str(config), str(weights), device="cpu")


def prompts(names):
    return PromptSet(
        templates="vild",
        score_order="max_then_softmax",
        classes=[ClassPrompts(name=n, queries=[n], slots=[None], source="bare") for n in names],
    )


def in_thread(function, *args, name: str | None = None):
    """Run ``function(*args)`` in a thread; returns (thread, box) with box["value"] or box["error"]."""
    box: dict = {}

    def work():
        try:
            box["value"] = function(*args)
        except BaseException as exc:  # reported by the test that reads the box
            box["error"] = exc

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread, box


def code(number: int) -> str:
    """A distinct three-character name (base 36), so 25 synonyms fit the 100-character cap."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(digits[number // 36**power % 36] for power in (2, 1, 0))


def huge_vocabulary(classes: int = 1000, synonyms: int = 25) -> list[str]:
    """The issue's vocabulary: 1,000 classes x 25 synonyms (25,000 phrases)."""
    return ["|".join(code(c * synonyms + s) for s in range(synonyms)) for c in range(classes)]


class GatedEncode:
    """``encode_text`` that holds one thread inside its ``gate``-th batch until released,
    and counts every thread's batches: a slow encoding made deterministic."""

    def __init__(self, thread_name: str, gate: int = 2) -> None:
        self.thread_name, self.gate = thread_name, gate
        self.batches = 0
        self.inside = threading.Event()
        self.release = threading.Event()
        self.real = text_module.encode_text

    def __call__(self, model, tokens):
        if threading.current_thread().name == self.thread_name:
            self.batches += 1
            if self.batches == self.gate:
                self.inside.set()
                assert self.release.wait(60), "never released"
        return self.real(model, tokens)


# --------------------------------------------------------------------------- text lookups and flights


def test_lookups_never_wait_for_another_calls_encoding_and_phrases_in_flight_are_awaited(
    tiny_model_files, tmp_path, monkeypatch
):
    store = open_text_cache(tmp_path / "text.sqlite")
    TextEmbedder(fresh_clip(tiny_model_files), store=store).embed(["cat", "dog"], "vild")  # in the store only
    embedder = TextEmbedder(fresh_clip(tiny_model_files), store=store)
    embedder.embed(["lamp"], "vild")  # in memory
    reference = TextEmbedder(fresh_clip(tiny_model_files))
    big = [f"thing {i}" for i in range(5 * PER_BATCH)]
    gate = GatedEncode("big")
    monkeypatch.setattr(text_module, "encode_text", gate)

    big_thread = threading.Thread(target=embedder.embed, args=(big, "vild"), name="big", daemon=True)
    big_thread.start()
    assert gate.inside.wait(60)  # the big call is inside its second batch, and stays there
    try:
        lookup, looked = in_thread(embedder.embed, ["lamp", "cat", "dog"], "vild")
        lookup.join(30)
        assert not lookup.is_alive(), "a lookup of embedded phrases waited for another call's encoding"
        assert torch.allclose(looked["value"], reference.embed(["lamp", "cat", "dog"], "vild"), atol=1e-6)
        assert embedder.encoded_sentences == (1 + PER_BATCH) * TEMPLATES  # lamp and the big call's first batch

        in_flight, later = big[PER_BATCH], big[4 * PER_BATCH]  # in the batch being encoded; not reached yet
        asking, asked = in_thread(embedder.embed, [in_flight, later, "new one"], "vild")
        deadline = time.monotonic() + 30
        while embedder.encoded_sentences < (3 + PER_BATCH) * TEMPLATES and time.monotonic() < deadline:
            time.sleep(0.01)
        # what nobody was encoding, it encoded at once; the phrase in flight it waits for
        assert embedder.encoded_sentences == (3 + PER_BATCH) * TEMPLATES
        asking.join(0.5)
        assert asking.is_alive()
    finally:
        gate.release.set()
    big_thread.join(60)
    asking.join(60)
    assert "error" not in asked
    assert torch.allclose(asked["value"], reference.embed([in_flight, later, "new one"], "vild"), atol=1e-6)
    # every phrase went through the text tower once: the big list, lamp and the new one
    assert embedder.encoded_sentences == (len(big) + 2) * TEMPLATES
    assert torch.allclose(embedder.embed(big, "vild"), reference.embed(big, "vild"), atol=1e-6)


def test_a_cancelled_encoding_stops_at_its_next_batch_and_keeps_what_it_finished(tiny_model_files, monkeypatch):
    embedder = TextEmbedder(fresh_clip(tiny_model_files))
    gate = GatedEncode("cancelled")
    monkeypatch.setattr(text_module, "encode_text", gate)
    token = CancelToken()
    phrases = [f"thing {i}" for i in range(6 * PER_BATCH)]

    def run():
        with cancellable(token):
            return embedder.embed(phrases, "vild")

    thread, box = in_thread(run, name="cancelled")
    assert gate.inside.wait(60)
    token.cancel("the call passed its time limit of 1 s")
    gate.release.set()
    thread.join(60)
    assert isinstance(box["error"], Cancelled) and "time limit of 1 s" in str(box["error"])
    assert gate.batches == 2 and embedder.encoded_sentences == 2 * PER_BATCH * TEMPLATES
    # the two finished batches are kept: nobody encodes them again
    embedder.embed(phrases[: 2 * PER_BATCH], "vild")
    assert embedder.encoded_sentences == 2 * PER_BATCH * TEMPLATES
    # a waiter whose own call is cancelled stops waiting at once
    waiting = CancelToken()
    waiting.cancel("gone")
    with cancellable(waiting), pytest.raises(Cancelled, match="gone"):
        embedder.embed(["never encoded"], "vild")
    assert embedder.encoded_sentences == 2 * PER_BATCH * TEMPLATES


# --------------------------------------------------------------------------- window passes


class CountedPasses:
    """Wraps a segmenter's forward pass: counts passes and calls ``at(n)`` before pass n."""

    def __init__(self, segmenter: CLIPSegmenter, at) -> None:
        self.passes, self.at, self.real = 0, at, segmenter._encode
        segmenter._encode = self

    def __call__(self, crops):
        self.passes += 1
        self.at(self.passes)
        return self.real(crops)


WINDOWS = dict(short_side=96, crop=64, stride=32, window_batch_size=2)  # 96x160: 2 x 4 = 8 windows, 4 passes


def test_a_cancelled_segmentation_stops_at_its_next_window_pass(tiny_clip, rng):
    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(**WINDOWS))
    rgb = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
    bank = seg.query_bank(prompts(["cat", "dog"]))
    token = CancelToken()
    counted = CountedPasses(seg, lambda n: n == 2 and token.cancel("the server is stopping"))
    with cancellable(token), pytest.raises(Cancelled, match="the server is stopping"):
        seg.segment(rgb, bank)
    assert counted.passes == 2 and seg.encoded_images == 0
    counted.at = lambda n: None
    assert seg.segment(rgb, bank).labels.shape == (96, 160)  # without a token: all 4 passes
    assert counted.passes == 6


def test_in_a_micro_batch_only_the_cancelled_caller_fails(tiny_clip, rng):
    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(**WINDOWS))
    images = [rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(2)]
    bank = seg.query_bank(prompts(["cat", "dog", "tree"]))
    alone = seg.segment(images[1], bank)
    tokens = [CancelToken(), CancelToken()]
    counted = CountedPasses(seg, lambda n: n == 2 and tokens[0].cancel("the call passed its time limit of 1 s"))
    batcher = MicroBatcher(seg, max_batch=2, max_wait_ms=30_000, expected_callers=lambda: 2)

    def caller(index):
        with cancellable(tokens[index]):
            return batcher.segment(images[index], bank)

    queued, submit = threading.Event(), batcher.submit
    batcher.submit = lambda job: (submit(job), queued.set())[0]
    first, first_box = in_thread(caller, 0)
    assert queued.wait(30)  # image 0 is queued first
    second, second_box = in_thread(caller, 1)
    first.join(60)
    second.join(60)
    assert isinstance(first_box.get("error"), Cancelled)
    arrays = second_box["value"]
    assert np.array_equal(arrays.labels, alone.labels) and np.allclose(arrays.confidence, alone.confidence, atol=1e-5)
    assert batcher.batch_sizes == {2: 1}  # one shared batch
    # image 0's first two passes (cancelled during the second), then image 1's four: image 0's
    # other two passes were dropped
    assert counted.passes == 6


def test_a_caller_cancelled_while_queued_leaves_at_once(tiny_clip, rng):
    class Blocked:
        def __init__(self):
            self.entered, self.release = threading.Event(), threading.Event()

        def segment_batch(self, jobs):
            self.entered.set()
            assert self.release.wait(60)
            return seg.segment_batch(jobs)

    seg = CLIPSegmenter(tiny_clip, SegmenterConfig(**WINDOWS))
    blocked = Blocked()
    batcher = MicroBatcher(blocked, max_batch=1)
    bank = seg.query_bank(prompts(["cat"]))
    rgb = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
    token = CancelToken()
    busy, busy_box = in_thread(batcher.segment, rgb, bank)  # holds the worker
    assert blocked.entered.wait(60)
    queued = batcher.submit(SegmentJob(rgb, bank, cancel=token))
    token.cancel("gone")
    with pytest.raises(Cancelled):
        result_unless_cancelled(queued, token, timeout=5)
    blocked.release.set()
    busy.join(60)
    assert busy_box["value"].labels.shape == (96, 160)
    with pytest.raises(Cancelled, match="gone"):  # dropped from the queue, never run
        queued.result(30)
    assert batcher.batch_sizes == {1: 1}


# --------------------------------------------------------------------------- the sentence budget


def test_the_sentence_budget_refuses_up_front_with_the_number(tiny_segmenter):
    service = SegmentationService(
        OpenSegR(segmenter=tiny_segmenter, lmm="none"), SafetyLimits(allowed_roots=[str(ROOT / "examples")])
    )
    vocabulary = huge_vocabulary()
    before = tiny_segmenter.text.encoded_sentences
    with pytest.raises(ToolInputError) as refused:
        service.segment({"image_path": "no-such-file.jpg", "vocabulary": vocabulary, "reasoning": False})
    message = str(refused.value)
    assert "\n" not in message and "350,000" in message and "50,000" in message and "25,000" in message
    assert tiny_segmenter.text.encoded_sentences == before  # nothing was encoded (nor the image read)
    service.check_text_budget(load_builtin("ade847_syn"))  # 1,298 x 14 = 18,172: allowed
    imagenet = SegmentationService(
        OpenSegR(segmenter=tiny_segmenter, lmm="none", settings=Settings(reasoning=False, templates="imagenet"))
    )
    with pytest.raises(ToolInputError, match=r"2,000,000 text sentences .*25,000 names and synonyms x 80 templates"):
        imagenet.check_text_budget(parse_class_list(vocabulary))


def test_the_budget_is_a_safety_setting_and_a_serve_flag(tmp_path):
    from openseg_r.cli.main import build_parser
    from openseg_r.tools.safety import load_safety_file

    (tmp_path / "safety.toml").write_text("[safety]\nmax_text_sentences = 1234\n")
    assert SafetyLimits.from_config(load_safety_file(tmp_path / "safety.toml")).max_text_sentences == 1234
    args = build_parser().parse_args(["serve", "mcp", "--max-text-sentences", "99"])
    assert args.max_text_sentences == 99


# --------------------------------------------------------------------------- the test, over MCP HTTP


@pytest.fixture
def live_server(tiny_model_files, tmp_path):
    """The real MCP server over streamable HTTP on loopback, in this process, so the test
    can read the model's counters."""
    import uvicorn

    from openseg_r.tools.mcp_server import build_mcp_server

    shutil.copy(PHOTO, tmp_path / "voc.jpg")
    wide = np.random.default_rng(0).integers(0, 255, (336, 2048, 3), dtype=np.uint8)
    __import__("PIL.Image", fromlist=["Image"]).fromarray(wide).save(tmp_path / "wide.png")
    segmenter = CLIPSegmenter(fresh_clip(tiny_model_files))
    model = OpenSegR(segmenter=segmenter, lmm="none", settings=Settings(reasoning=False))
    limits = SafetyLimits(
        allowed_roots=[tmp_path], max_concurrent=2, queue_timeout_s=60, call_timeout_s=600, max_text_sentences=400_000
    )
    service = SegmentationService(model, limits)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            build_mcp_server(service).streamable_http_app(host="127.0.0.1"),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp", service
    service.stop()
    server.should_exit = True
    thread.join(30)


def test_a_maximal_call_does_not_hold_up_a_small_one_and_its_work_stops_at_the_limit(live_server):
    """The issue's case: 1,000 classes x 25 synonyms on a 2048x336 image, over the time
    limit; a cached voc21 call made while it runs answers in its usual time (plus what the
    shared CPU costs), and the abandoned encoding stops soon after the limit."""
    from mcp import Client

    url, service = live_server
    text = service.model.segmenter.text
    small = {"image_path": "voc.jpg", "vocabulary": "voc21", "reasoning": False, "masks": "none"}
    maximal = {"image_path": "wide.png", "reasoning": False, "masks": "none", "vocabulary": huge_vocabulary()}

    async def timed(client, arguments):
        started = time.monotonic()
        result = await client.call_tool("segment", arguments)
        return result, time.monotonic() - started

    async def main():
        async with Client(url) as client:
            await timed(client, small)  # cold: encodes voc21
            result, normal = await timed(client, small)
            assert not result.is_error
            limit = max(3.0, 4 * normal)
            service.limits.call_timeout_s = limit
            before = text.encoded_sentences
            big = asyncio.create_task(timed(client, maximal))
            deadline = time.monotonic() + 60
            while text.encoded_sentences < before + 2 * text_module.TEXT_BATCH and time.monotonic() < deadline:
                await asyncio.sleep(0.02)  # the maximal call is encoding
            result, during = await timed(client, small)
            assert not result.is_error, result.content[0].text
            assert during < 3 * normal + 5.0, (during, normal)
            result, _ = await big
            assert result.is_error and f"longer than the limit of {limit:g} s" in result.content[0].text
            return limit

    asyncio.run(main())
    # the abandoned work stops at its next text batch: the count stops growing, far short of 350,000
    last, deadline = -1, time.monotonic() + 20
    while text.encoded_sentences != last and time.monotonic() < deadline:
        last = text.encoded_sentences
        time.sleep(1.0)
    assert text.encoded_sentences == last < 25_000 * TEMPLATES
    assert service.wait_idle(20)  # and its slot is free again


# --------------------------------------------------------------------------- stopping the server


def test_work_that_ignores_the_stop_is_abandoned_after_the_grace_period(tiny_segmenter, monkeypatch, capsys):
    """The watchdog behind the signal handlers: a call is cancelled at once, and work that
    does not stop (here a segmenter that never reads its token) is abandoned after the
    grace period with one line and the signal's exit code."""
    from openseg_r.tools import lifecycle

    class Stuck:
        def __init__(self):
            self.entered, self.release = threading.Event(), threading.Event()

        def query_bank(self, prompts):
            return tiny_segmenter.query_bank(prompts)

        def segment(self, rgb, bank, **options):
            self.entered.set()
            assert self.release.wait(60)
            return tiny_segmenter.segment(rgb, bank, **options)

        def describe(self):
            return tiny_segmenter.describe()

    stuck = Stuck()
    service = SegmentationService(
        OpenSegR(segmenter=stuck, lmm="none", settings=Settings(reasoning=False)),
        SafetyLimits(allowed_roots=[str(ROOT / "examples")]),
    )
    exits, exited = [], threading.Event()
    monkeypatch.setattr(lifecycle, "STOP_GRACE_S", 0.5)
    monkeypatch.setattr(lifecycle, "EXIT_GRACE_S", 0.1)
    monkeypatch.setattr(lifecycle.os, "_exit", lambda code: (exits.append(code), exited.set()))
    caller, answer = in_thread(service.segment, {"image_path": "voc.jpg", "vocabulary": ["cat"], "reasoning": False})
    try:
        assert stuck.entered.wait(60)
        stop = lifecycle.StopOnSignal(service)
        stop.notice(signal.SIGINT)
        caller.join(10)
        assert not caller.is_alive() and "cancelled: the server is stopping" in str(answer["error"])
        with pytest.raises(ToolInputError, match="the server is stopping"):  # and nothing new starts
            service.segment({"image_path": "voc.jpg", "vocabulary": ["cat"]})
        assert exited.wait(30) and exits == [130]
        assert capsys.readouterr().err.splitlines() == [
            "openseg-r: interrupted; a segmentation still running 0.5 s later was abandoned"
        ]
    finally:
        stuck.release.set()
    assert service.wait_idle(30)


def serve_command(tiny_model_files, root, *extra) -> list[str]:
    config, weights = tiny_model_files
    return [
        sys.executable,
        "-m",
        "openseg_r.cli",
        "serve",
        "mcp",
        "--clip-model",
        str(config),
        "--clip-pretrained",
        str(weights),
        "--lmm",
        "none",
        "--cache",
        "none",
        "--root",
        str(root),
        "--call-timeout",
        "600",
        "--max-text-sentences",
        "400000",
        *extra,
    ]


def long_call() -> dict:
    """350,000 sentences: minutes on the tiny model."""
    return {"image_path": "voc.jpg", "vocabulary": huge_vocabulary(), "reasoning": False, "masks": "none"}


def test_sigint_stops_the_http_server_during_a_long_call(tiny_model_files, tmp_path):
    from mcp import Client

    shutil.copy(PHOTO, tmp_path / "voc.jpg")
    port = free_port()
    process = subprocess.Popen(
        serve_command(tiny_model_files, tmp_path, "--http", "--port", str(port)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    calling = threading.Event()

    async def client():
        async with Client(f"http://127.0.0.1:{port}/mcp") as session:
            calling.set()
            return await session.call_tool("segment", long_call())

    try:
        wait_until_listening(process, port)
        caller, answer = in_thread(asyncio.run, client())
        assert calling.wait(60)
        time.sleep(3.0)  # the call is accepted and encoding
        assert process.poll() is None and caller.is_alive()
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(30)
        stopped_after = time.monotonic() - started
        stderr = process.stderr.read()
        assert process.returncode == 130, stderr
        assert stopped_after < 10.0, stopped_after
        assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "openseg-r: interrupted", stderr
        caller.join(30)  # the caller heard why
        assert answer["value"].is_error and "cancelled: the server is stopping" in answer["value"].content[0].text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "stop, code, last_line", [(signal.SIGINT, 130, "openseg-r: interrupted"), (signal.SIGTERM, 0, "openseg-r: stopped")]
)
def test_a_signal_stops_the_stdio_server_during_a_long_call(tiny_model_files, tmp_path, stop, code, last_line):
    import json

    shutil.copy(PHOTO, tmp_path / "voc.jpg")
    process = subprocess.Popen(
        serve_command(tiny_model_files, tmp_path),
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def send(message):
            process.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
            process.stdin.flush()

        send(
            {
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"},
                },
            }
        )
        assert json.loads(process.stdout.readline())["id"] == 1  # the model is loaded and the server answers
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "tools/call", "params": {"name": "segment", "arguments": long_call()}})
        time.sleep(3.0)
        assert process.poll() is None
        started = time.monotonic()
        process.send_signal(stop)
        process.wait(30)
        stopped_after = time.monotonic() - started
        stderr = process.stderr.read()
        assert process.returncode == code, stderr
        assert stopped_after < 10.0, stopped_after
        assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == last_line, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_segment_with_a_token_set_mid_run_stops_before_the_next_step(tiny_segmenter, voc):
    """The Python API's ``cancel=``: a token set while the graph runs (here by the first
    node that starts) ends the run with Cancelled, and segmentation never starts."""
    model = OpenSegR(segmenter=tiny_segmenter, lmm="none")
    token = CancelToken()
    started = []

    def on_event(event):
        if event.get("event") == "node_start":
            started.append(event["node"])
            token.cancel("the caller gave up")

    with pytest.raises(Cancelled, match="the caller gave up"):
        model.segment(voc["rgb"], ["cat", "sofa"], on_event=on_event, cancel=token)
    assert started and "segmentation" not in started
    assert model.segment(voc["rgb"], ["cat", "sofa"]).labels.shape == voc["rgb"].shape[:2]  # the model is still usable
