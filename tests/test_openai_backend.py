"""The OpenAI-compatible backend against real servers on loopback: ``transformers serve``
running SmolLM2, a server that accepts connections and never answers, and a port
nobody listens on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import httpx
import numpy as np
import openai
import pytest
from langchain_core.messages import HumanMessage
from langgraph.runtime import Runtime
from loopback import DrippingOpenAIServer, silent_server
from test_hf_backend import NO_JSON, SMOLLM2_ANSWERS, pinned_smollm2  # the pinned answers of the model served here

from openseg_r.lmm import LMMRequest
from openseg_r.lmm.openai_compat import OpenAICompatibleLMM, _is_rejected_request, image_block
from openseg_r.nodes import GenericReasoningInput, generic_reasoning
from openseg_r.nodes.context import OpenSegContext
from openseg_r.schemas import ClassReasoning
from openseg_r.vocab import parse_class_list

pytest.importorskip("fastapi", reason="transformers serve needs: pip install 'transformers[serving]'")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm_gguf, tmp_path_factory):
    """The README's way: ``openseg-r lmm serve MODEL.gguf`` (converted once, then transformers serve)."""
    port = free_port()
    cache = tmp_path_factory.mktemp("serve-cache")
    env = dict(os.environ, HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(cache))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openseg_r.cli",
            "lmm",
            "serve",
            str(smollm_gguf),
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"transformers serve exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("transformers serve did not start within 120 s")
    (folder,) = (cache / "openseg-r" / "served-models").iterdir()  # the spec `lmm serve` printed names it
    yield f"{url}/v1", str(folder)
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_generic_reasoning_through_a_real_server(server, smollm_gguf):
    """The same greedy SmolLM2 as tests/test_hf_backend.py, served: the same texts, so the
    same pinned outcome (cat falls back, bird validates on its second attempt)."""
    pinned_smollm2(smollm_gguf)
    url, model = server
    lmm = OpenAICompatibleLMM(model, url, max_tokens=96, timeout=300, max_retries=0)
    vocab = parse_class_list("cat, bird")
    # One call at a time: the server interleaves concurrent generations, so on a loaded
    # machine one call could outlast its time-out (and the answers come back as pinned).
    context = OpenSegContext(lmm=lmm, max_concurrent_lmm_calls=1)
    out = generic_reasoning(GenericReasoningInput(vocabulary=vocab), Runtime(context=context))
    said = {name: [call.raw_text for call in out.lmm_calls if call.subject == name] for name in vocab.names}
    assert said == {name: SMOLLM2_ANSWERS[name] for name in vocab.names}  # the model's side first
    assert [(c.subject, c.attempt, c.ok, c.error) for c in out.lmm_calls] == [
        ("cat", 1, False, NO_JSON),
        ("cat", 2, False, NO_JSON),
        ("bird", 1, False, NO_JSON),
        ("bird", 2, True, None),
    ]
    assert [(f.subject, f.reason, f.used) for f in out.fallbacks] == [("cat", NO_JSON, "bare class name")]
    assert out.generic_reasoning == {
        "cat": ClassReasoning(name="cat"),
        "bird": ClassReasoning(name="bird", general_category="bird", sub_category="bird", attributes=["..."]),
    }
    # the server's token counts reach the trace
    assert [c.usage.completion_tokens for c in out.lmm_calls] == [11, 22, 21, 49]
    assert all(c.usage.prompt_tokens > 100 for c in out.lmm_calls)
    assert all(c.backend == f"openai:{model}" for c in out.lmm_calls)


def request():
    return LMMRequest(
        step="generic_reasoning", subject="cat", prompt="Reason about cat.", prompt_version="t", schema=ClassReasoning
    )


def test_a_server_that_times_out_is_a_bounded_recorded_failure():
    silent = silent_server()
    try:
        lmm = OpenAICompatibleLMM("m", f"http://127.0.0.1:{silent.port}/v1", timeout=0.5, max_retries=1, max_attempts=2)
        started = time.monotonic()
        reply = lmm.ask(request())
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert reply.value is None and len(reply.calls) == 1  # no answer within the timeout: the backend is down
    assert "timed out: no complete answer within the 0.5 s timeout" in reply.error and reply.unavailable
    assert elapsed < 5


def test_a_server_that_drips_its_reply_is_given_up_at_the_timeout_retries_included():
    """``timeout`` is a deadline for the whole request: a 200 whose body comes a byte a
    second (a client's per-read timeout never fires) ends at it, and is not retried."""
    drip = DrippingOpenAIServer()
    try:
        lmm = OpenAICompatibleLMM("drip", drip.url, timeout=2, max_retries=3, max_attempts=3)
        started = time.monotonic()
        reply = lmm.ask(request())
        elapsed = time.monotonic() - started
    finally:
        drip.close()
    assert reply.value is None and reply.unavailable and "2 s timeout, retries included" in reply.error
    assert drip.chats == 1 and 1.5 < elapsed < 5


def test_a_request_in_flight_is_abandoned_when_its_work_is_cancelled():
    from openseg_r._support.cancel import Cancelled, CancelToken, cancellable

    drip = DrippingOpenAIServer()
    token = CancelToken()
    try:
        lmm = OpenAICompatibleLMM("drip", drip.url, timeout=60, max_retries=0, max_attempts=1)
        threading.Timer(1.0, token.cancel, args=("the call's time limit",)).start()
        started = time.monotonic()
        with cancellable(token), pytest.raises(Cancelled, match="the call's time limit"):
            lmm.ask(request())
        elapsed = time.monotonic() - started
    finally:
        drip.close()
    assert drip.chats == 1 and elapsed < 3


def test_a_server_that_is_down_is_a_recorded_failure():
    lmm = OpenAICompatibleLMM("m", f"http://127.0.0.1:{free_port()}/v1", timeout=2, max_retries=1, max_attempts=1)
    reply = lmm.ask(request())
    assert reply.value is None and "connection refused" in reply.error.lower()


def test_images_go_as_standard_content_blocks():
    lmm = OpenAICompatibleLMM("m", "http://127.0.0.1:9/v1")
    rgb = np.zeros((3000, 1000, 3), np.uint8)
    block = image_block(rgb, 1344)
    assert block["type"] == "image" and block["mime_type"] == "image/png"
    payload = lmm.chat._get_request_payload([HumanMessage(content=[{"type": "text", "text": "hi"}, block])])
    parts = payload["messages"][0]["content"]
    assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_api_key_comes_from_the_environment_and_is_never_shown(monkeypatch):
    monkeypatch.setenv("OPENSEG_R_API_KEY", "sk-do-not-print")
    lmm = OpenAICompatibleLMM("m", "http://127.0.0.1:9/v1")
    assert lmm.chat.openai_api_key.get_secret_value() == "sk-do-not-print"
    assert "sk-do-not-print" not in repr(lmm.chat) and "sk-do-not-print" not in str(vars(lmm))


def test_rejected_response_format_is_recognised():
    response = httpx.Response(400, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    rejected = openai.BadRequestError("response_format is not supported", response=response, body=None)
    assert _is_rejected_request(rejected)
    unauthorised = openai.AuthenticationError(
        "bad key", response=httpx.Response(401, request=response.request), body=None
    )
    assert not _is_rejected_request(unauthorised)
    assert not _is_rejected_request(openai.APIConnectionError(request=response.request))
