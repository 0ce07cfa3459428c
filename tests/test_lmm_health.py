"""LMM backend health (issue 13): a dead or misconfigured LMM server is one stated failure,
not a run that looks successful. Against real sockets on loopback: a port nobody listens
on, a server that accepts and hangs up at once, and an OpenAI-compatible HTTP server that
records every request and answers valid JSON (or 401, or 404, when told to)."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from loopback import hang_up_server
from PIL import Image

from openseg_r import OpenSegR, cli
from openseg_r.cli.options import EXIT_NO_REASONING, EXIT_OK, EXIT_USAGE
from openseg_r.config.options import ModelOptions
from openseg_r.errors import ConfigError, ReasoningUnavailableError
from openseg_r.lmm import ScriptedLMM, backend_from_spec
from openseg_r.lmm.health import NOT_ASKED
from openseg_r.tools.lmm_check import check_backend

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "voc.jpg"
SCRIPT = ROOT / "examples" / "voc_reasoning.json"
MODEL = "tiny-vlm"


def closed_port() -> int:
    """A loopback port nobody listens on: bound, read, closed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FakeLMMServer:
    """An OpenAI-compatible server on loopback: ``GET /v1/models`` lists ``models``;
    ``POST /v1/chat/completions`` records the request body and answers valid JSON for the
    schema it names (``status`` other than 200: that HTTP error instead)."""

    def __init__(self, port: int = 0, models: tuple[str, ...] = (MODEL,), status: int = 200, busy: int = 0) -> None:
        self.models, self.status = models, status
        self.busy = busy  # the first chat requests answered 503, as an overloaded server does
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def chats(self) -> list[dict]:
        return [body for path, body in zip(self.paths, self.bodies) if path.endswith("/chat/completions")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 (http.server's name)
                owner.paths.append(self.path)
                owner.bodies.append({})
                if owner.status in (401, 403):
                    return self._send(owner.status, {"error": {"message": "no"}})
                self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in owner.models]})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                owner.paths.append(self.path)
                owner.bodies.append(body)
                if owner.status != 200:
                    return self._send(owner.status, {"error": {"message": f"status {owner.status}"}})
                if owner.busy:
                    owner.busy -= 1
                    return self._send(503, {"error": {"message": "busy"}})
                if body.get("model") not in owner.models:
                    return self._send(404, {"error": {"message": f"The model {body.get('model')} does not exist"}})
                schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "")
                text = json.dumps(answer(schema, prompt_text(body)))
                self._send(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
                    },
                )

            def log_message(self, *args):
                pass

        return Handler


def prompt_text(body: dict) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        parts += (
            [content]
            if isinstance(content, str)
            else [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
        )
    return "\n".join(parts)


def answer(schema: str, prompt: str) -> dict:
    """What a cooperative LMM answers: the prompt's own class names, plausible fields."""
    if schema == "ClassReasoning":
        found = re.search(r'about the object class "(.*?)"', prompt)
        name = found.group(1) if found else "object"
        return {
            "name": name,
            "general_category": "object",
            "sub_category": name,
            "attributes": [f"{name} shape", f"{name} texture"],
        }
    if schema == "ImageReasoning":
        found = re.search(r"Candidate classes: (.*?)\.\n", prompt)
        names = json.loads(f"[{found.group(1)}]") if found else []
        return {"description": "a photo", "candidates": [{"name": n, "attributes": [f"{n} here"]} for n in names]}
    return {"choice": "none of these", "confidence": 0.5, "reason": "unsure"}


@pytest.fixture
def server():
    running = FakeLMMServer()
    yield running
    running.close()


@pytest.fixture
def tiny_args(tiny_model_files):
    config, weights = tiny_model_files
    return ["--clip-model", str(config), "--clip-pretrained", str(weights), "--cache", "none"]


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "openseg_r.cli", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def spec_at(port_or_url) -> str:
    url = port_or_url if isinstance(port_or_url, str) else f"http://127.0.0.1:{port_or_url}/v1"
    return f"openai:{MODEL}@{url}"


# --------------------------------------------------------------------------- the breaker


def test_a_closed_port_is_one_attempt_and_one_fallback_naming_it(tiny_segmenter, voc):
    port = closed_port()
    model = OpenSegR(segmenter=tiny_segmenter, lmm=spec_at(port))
    with pytest.raises(ReasoningUnavailableError) as caught:
        model.segment(voc["rgb"], "voc21")
    message = str(caught.value)
    assert f"LMM backend unreachable: connection refused at http://127.0.0.1:{port}/v1" in message
    assert "\n" not in message and caught.value.unavailable
    result = caught.value.result  # the bare-name result is still there for a caller who wants it
    assert len(result.state.lmm_calls) == 1  # 20 classes and the image: one attempt in all
    assert [(f.step, f.subject, f.used) for f in result.state.fallbacks] == [
        (result.state.fallbacks[0].step, None, NOT_ASKED)
    ]
    assert all(not r.attributes for r in result.state.generic_reasoning.values())

    allowed = model.segment(voc["rgb"], "voc21", allow_fallback=True)  # a later run checks again: one more
    assert len(allowed.state.lmm_calls) == 1 and len(allowed.state.fallbacks) == 1
    assert "connection refused" in allowed.state.fallbacks[0].reason


def test_a_server_that_hangs_up_gets_one_connection_per_run(tiny_segmenter, voc):
    hang_up = hang_up_server()
    try:
        model = OpenSegR(segmenter=tiny_segmenter, lmm=spec_at(hang_up.port), lmm_concurrency=32)
        result = model.segment(voc["rgb"], "voc21", allow_fallback=True, self_check={"enabled": True})
        assert hang_up.connections == 1
        assert len(result.state.fallbacks) == 1
        assert "closed the connection without an HTTP answer" in result.state.fallbacks[0].reason
        assert result.state.self_check.stopped.startswith("LMM backend unreachable")  # nothing asked
        model.segment(voc["rgb"], "voc21", allow_fallback=True)
        assert hang_up.connections == 2  # the breaker is per run: the next run tries once again
    finally:
        hang_up.close()


def test_the_breaker_resets_so_a_long_lived_model_recovers(tiny_segmenter, voc):
    port = closed_port()
    model = OpenSegR(segmenter=tiny_segmenter, lmm=spec_at(port))
    down = model.segment(voc["rgb"], "cat, dog", allow_fallback=True)
    assert len(down.state.fallbacks) == 1
    server = FakeLMMServer(port=port)  # the LMM server comes up where it was expected
    try:
        up = model.segment(voc["rgb"], "cat, dog")
    finally:
        server.close()
    assert up.state.fallbacks == []
    assert up.state.generic_reasoning["cat"].attributes == ["cat shape", "cat texture"]
    assert len(server.chats) == 3  # cat, dog and the image, each asked once


def test_a_rejected_key_and_a_missing_model_are_not_re_asked(tiny_segmenter, voc):
    refused = FakeLMMServer(status=401)
    try:
        result = OpenSegR(segmenter=tiny_segmenter, lmm=spec_at(refused.url)).segment(
            voc["rgb"], "cat, dog, bird", allow_fallback=True
        )
    finally:
        refused.close()
    assert refused.chats == [] and len(refused.paths) == 1  # the check of /models said it: nothing asked
    assert "rejected the API key (HTTP 401)" in result.state.fallbacks[0].reason
    assert len(result.state.fallbacks) == 1

    elsewhere = FakeLMMServer(models=("some-other-model",))
    try:
        # one call at a time: the first 404 stops the run before any other question is sent
        model = OpenSegR(segmenter=tiny_segmenter, lmm=spec_at(elsewhere.url), lmm_concurrency=1)
        result = model.segment(voc["rgb"], "cat, dog, bird", allow_fallback=True)
    finally:
        elsewhere.close()
    assert len(elsewhere.chats) == 1  # one 404, then the run stops asking
    assert "has no such model or endpoint (HTTP 404)" in result.state.fallbacks[0].reason
    assert len(result.state.fallbacks) == 1


def test_unusable_answers_alone_are_no_reasoning_too(tiny_segmenter, voc):
    lmm = ScriptedLMM({"generic_reasoning": {"cat": "<<not json>>"}, "image_reasoning": "nope"})
    model = OpenSegR(segmenter=tiny_segmenter, lmm=lmm)
    with pytest.raises(ReasoningUnavailableError, match="every LMM answer was unusable") as caught:
        model.segment(voc["rgb"], "cat, dog")
    assert not caught.value.unavailable
    assert len(caught.value.result.state.fallbacks) == 3  # per class and image: the backend answered
    partly = ScriptedLMM({"generic_reasoning": {"cat": {"attributes": ["whiskers"]}}})
    result = OpenSegR(segmenter=tiny_segmenter, lmm=partly).segment(voc["rgb"], "cat, dog")
    assert result.state.generic_reasoning["cat"].attributes == ["whiskers"]  # some reasoning: no error
    bare = OpenSegR(segmenter=tiny_segmenter, lmm="none").segment(voc["rgb"], "cat, dog", reasoning=True)
    assert bare.state.fallbacks  # no LMM configured: reasoning was never really asked for, no error


# --------------------------------------------------------------------------- the command line


def test_segment_against_a_closed_port_exits_4_with_one_line(tmp_path, tiny_args):
    port = closed_port()
    failed = run_cli("segment", PHOTO, "--vocab", "voc21", "--lmm", spec_at(port), *tiny_args, "--out", tmp_path / "a")
    assert failed.returncode == EXIT_NO_REASONING == 4, failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(
        "openseg-r: error: no LMM reasoning in this run: LMM backend unreachable: "
        f"connection refused at http://127.0.0.1:{port}/v1"
    )
    assert "--allow-fallback" in lines[0]
    assert not (tmp_path / "a" / "result.json").exists()

    allowed = run_cli(
        "segment",
        PHOTO,
        "--vocab",
        "voc21",
        "--lmm",
        spec_at(port),
        "--allow-fallback",
        *tiny_args,
        "--out",
        tmp_path / "b",
    )
    assert allowed.returncode == EXIT_OK, allowed.stderr
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["settings"]["allow_fallback"] is True
    assert len(result["lmm_calls"]) == 1 and len(result["fallbacks"]) == 1
    assert all(c["source"] == "bare" for c in result["prompts"]["classes"])
    assert f"connection refused at http://127.0.0.1:{port}/v1" in allowed.stderr


def test_segment_on_many_images_stops_at_an_unreachable_backend(tmp_path, tiny_args):
    photos = tmp_path / "photos"
    photos.mkdir()
    for number in range(6):
        Image.open(PHOTO).crop((number * 10, 0, number * 10 + 200, 150)).save(photos / f"{number}.png")
    failed = run_cli(
        "segment",
        photos,
        "--classes",
        "cat, dog",
        "--lmm",
        spec_at(closed_port()),
        "--concurrency",
        "1",
        *tiny_args,
        "--out",
        tmp_path / "out",
    )
    assert failed.returncode == EXIT_NO_REASONING, failed.stderr
    index = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert 1 <= len(index) < 6 and not any(line["ok"] for line in index)  # stopped, not asked 6 times
    assert failed.stderr.strip().splitlines()[-1].startswith("openseg-r: error: LMM backend unreachable")


def test_eval_stops_with_exit_4_and_resumes_with_allow_fallback(tmp_path, tiny_args):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "classes.txt").write_text("background\ncat\n")
    for number in range(2):
        Image.open(PHOTO).crop((number * 20, 0, number * 20 + 160, 120)).save(data / "images" / f"{number}.png")
        Image.fromarray(np.zeros((120, 160), np.uint8)).save(data / "labels" / f"{number}.png")
    spec = spec_at(closed_port())
    stopped = run_cli(
        "eval",
        "--dataset",
        "folder",
        "--root",
        data,
        "--lmm",
        spec,
        "--no-progress",
        *tiny_args,
        "--out",
        tmp_path / "ev",
    )
    assert stopped.returncode == EXIT_NO_REASONING, stopped.stderr
    assert len(stopped.stderr.strip().splitlines()) == 1 and "connection refused" in stopped.stderr
    resumed = run_cli(
        "eval",
        "--dataset",
        "folder",
        "--root",
        data,
        "--lmm",
        spec,
        "--no-progress",
        "--allow-fallback",
        *tiny_args,
        "--out",
        tmp_path / "ev",
    )
    assert resumed.returncode == EXIT_OK, resumed.stderr
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["images"] == 2


# --------------------------------------------------------------------------- lmm check


def test_lmm_check_on_a_working_server(server, capsys):
    code = cli.main(["lmm", "check", spec_at(server.url)])
    out = capsys.readouterr()
    assert code == EXIT_OK, out.err
    assert f"{MODEL} is listed" in out.out
    assert re.search(r"generic: +valid in \d+\.\d\d s .*: cat is 'object'", out.out)
    assert "image:     valid in " in out.out and "'a photo'" in out.out
    assert out.out.rstrip().endswith("verdict:   usable") and out.err == ""
    assert server.paths[0] == "/v1/models" and len(server.chats) == 2
    from openseg_r.prompts.reasoning import GENERIC_REASONING

    assert prompt_text(server.chats[0]) == GENERIC_REASONING.render(class_name="cat")  # what a run asks
    assert 'Candidate classes: "cat", "dog".' in prompt_text(server.chats[1])
    assert server.chats[1]["messages"][0]["content"][1]["type"] == "image_url"


def test_lmm_check_of_an_unusable_backend_is_one_line_and_exit_4(server, capsys):
    port = closed_port()
    assert cli.main(["lmm", "check", spec_at(port)]) == EXIT_NO_REASONING
    out = capsys.readouterr()
    assert out.err == f"openseg-r: error: LMM backend unreachable: connection refused at http://127.0.0.1:{port}/v1\n"
    assert "reachable: no" in out.out

    assert cli.main(["lmm", "check", f"openai:missing@{server.url}"]) == EXIT_NO_REASONING
    out = capsys.readouterr()
    assert "missing is not listed; the server lists: tiny-vlm" in out.out
    assert out.err.startswith("openseg-r: error: LMM backend has no such model or endpoint (HTTP 404)")

    assert cli.main(["lmm", "check", "none"]) == EXIT_NO_REASONING
    assert "names no LMM" in capsys.readouterr().err


def test_lmm_check_of_offline_backends(tmp_path, capsys):
    assert cli.main(["lmm", "check", f"scripted:{SCRIPT}"]) == EXIT_OK
    assert "generic_reasoning (20 classes)" in capsys.readouterr().out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli.main(["lmm", "check", f"replay:{empty}"]) == EXIT_NO_REASONING
    assert "holds no answer" in capsys.readouterr().err
    assert check_backend(backend_from_spec(f"scripted:{SCRIPT}")).usable


# --------------------------------------------------------------------------- backend options


def test_lmm_options_reach_the_server_and_the_trace(server, tmp_path, tiny_args, capsys):
    out = tmp_path / "out"
    code = cli.main(
        [
            "segment",
            str(PHOTO),
            "--classes",
            "cat, dog",
            "--lmm",
            spec_at(server.url),
            "--lmm-option",
            "max_tokens=16",
            "--lmm-option",
            "temperature=0.5",
            "--lmm-option",
            "concurrency=2",
            *tiny_args,
            "--out",
            str(out),
        ]
    )
    assert code == EXIT_OK, capsys.readouterr().err
    assert server.chats and all(body["max_completion_tokens"] == 16 for body in server.chats)
    assert all(body["temperature"] == 0.5 for body in server.chats)
    recorded = json.loads((out / "result.json").read_text())["lmm"]
    assert recorded["options"]["max_tokens"] == 16 and recorded["options"]["concurrency"] == 2
    assert recorded["generation_params"] == {"temperature": 0.5, "max_tokens": 16}
    assert recorded["backend"] == f"openai:{MODEL}"


def test_the_config_files_lmm_table_and_keyword_arguments(server, tmp_path, monkeypatch, tiny_segmenter, voc):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[lmm]\nspec = "{spec_at(server.url)}"\nmax_tokens = 24\ntimeout = 30\nmax_attempts = 1\nconcurrency = 3\n'
    )
    monkeypatch.setenv("OPENSEG_R_CONFIG", str(config))
    model = OpenSegR(segmenter=tiny_segmenter, runs_db=tmp_path / "runs.db")
    assert model.lmm.max_attempts == 1 and model.lmm_concurrency == 3
    result = model.segment(voc["rgb"], "cat")
    assert server.chats[-1]["max_completion_tokens"] == 24
    options = result.to_json()["lmm"]["options"]
    assert (options["max_tokens"], options["timeout"], options["max_attempts"]) == (24, 30.0, 1)
    recorded = model.runs_db.get_run(result.run_id).options["lmm_options"]  # replay builds the same backend
    assert recorded["max_tokens"] == 24 and recorded["concurrency"] == 3

    over = OpenSegR(segmenter=tiny_segmenter, lmm_options={"max_tokens": 8, "concurrency": 5})
    over.segment(voc["rgb"], "dog")
    assert server.chats[-1]["max_completion_tokens"] == 8 and over.lmm.max_attempts == 1  # key by key
    assert over.lmm_concurrency == 5

    config.write_text('[lmm]\nspec = "none"\ncolour = "red"\n')
    with pytest.raises(
        ConfigError,
        match=r"unknown LMM option 'colour' in the \[lmm\] table of .*; valid keys: "
        "max_tokens, timeout, temperature, max_attempts, concurrency",
    ):
        OpenSegR(segmenter=tiny_segmenter)


def test_bad_lmm_options_are_one_line_naming_the_valid_keys(tmp_path, capsys, tiny_segmenter):
    for option, words in [
        ("colour=red", "unknown LMM option 'colour'"),
        ("max_tokens=lots", "max_tokens"),
        ("temperature=9", "temperature"),
        ("max_tokens", "takes key=value"),
    ]:
        code = cli.main(
            [
                "segment",
                str(PHOTO),
                "--classes",
                "cat",
                "--lmm",
                f"scripted:{SCRIPT}",
                "--lmm-option",
                option,
                "--out",
                str(tmp_path),
            ]
        )
        err = capsys.readouterr().err
        assert code == EXIT_USAGE and err.count("\n") == 1, err
        assert words in err and "valid keys: max_tokens, timeout, temperature, max_attempts, concurrency" in err
    with pytest.raises(ConfigError, match="unknown LMM option 'nope'"):
        OpenSegR(segmenter=tiny_segmenter, lmm=f"scripted:{SCRIPT}", lmm_options={"nope": 1})
    with pytest.raises(ConfigError, match="disagree"):
        OpenSegR(segmenter=tiny_segmenter, lmm_concurrency=4, lmm_options={"concurrency": 3})
    with pytest.raises(ConfigError, match="disagree"):
        ModelOptions.build(lmm_concurrency=4, lmm_options=["concurrency=3"])


def test_options_set_the_backends_calls():
    lmm = backend_from_spec(
        "openai:m@http://127.0.0.1:9/v1",
        options={"max_tokens": 64, "timeout": 7, "temperature": 0.2, "max_attempts": 3},
    )
    assert (lmm.chat.max_tokens, lmm.chat.request_timeout, lmm.chat.temperature, lmm.max_attempts) == (64, 7, 0.2, 3)
    assert lmm.chat.max_retries == 0  # retries are the backend's own: never after a refused connection
    scripted = backend_from_spec(f"scripted:{SCRIPT}", options={"max_attempts": 1})
    assert scripted.max_attempts == 1


def test_lmm_check_of_an_in_process_model(tiny_vlm_dir, capsys):
    """A randomly initialised VLM: loaded in process, but its gibberish is no JSON."""
    assert cli.main(["lmm", "check", f"hf:{tiny_vlm_dir}", "--lmm-option", "max_tokens=8"]) == EXIT_NO_REASONING
    out = capsys.readouterr()
    assert "reachable: in process" in out.out and "generic:   no valid answer" in out.out
    assert out.err.count("\n") == 1 and "neither generic nor image reasoning came back" in out.err


def test_every_command_that_takes_an_lmm_takes_lmm_options():
    def walk(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield (*path, name), sub
                    yield from walk(sub, (*path, name))

    taking = {
        " ".join(path): {flag for a in sub._actions for flag in a.option_strings}
        for path, sub in walk(cli.build_parser())
    }
    with_lmm = {name for name, flags in taking.items() if "--lmm" in flags}
    assert {"segment", "eval", "reason generic", "serve mcp", "runs replay", "runs resume"} <= with_lmm
    assert all("--lmm-option" in taking[name] for name in with_lmm | {"lmm check"})
    assert {name for name, flags in taking.items() if "--allow-fallback" in flags} == {"segment", "eval", "serve web"}


def test_a_request_the_backend_cannot_take_is_not_re_asked():
    """A text-only model asked about an image says so once; the backend stays usable."""
    from openseg_r.lmm import LMMRequest
    from openseg_r.lmm.health import RequestUnsupported
    from openseg_r.schemas import ClassReasoning

    class TextOnly(ScriptedLMM):
        def complete(self, request, feedback=None):
            if request.images:
                raise RequestUnsupported("a text-only model cannot look at images")
            return super().complete(request, feedback)

    lmm = TextOnly({"generic_reasoning": {"cat": {"attributes": ["whiskers"]}}}, max_attempts=3)
    with_image = LMMRequest(
        step="image_reasoning",
        prompt="Describe.",
        prompt_version="t",
        schema=ClassReasoning,
        images=[np.zeros((8, 8, 3), np.uint8)],
    )
    reply = lmm.ask(with_image)
    assert reply.value is None and len(reply.calls) == 1 and reply.unavailable is None
    assert "cannot look at images" in reply.error
    text = LMMRequest(step="generic_reasoning", subject="cat", prompt="cat?", prompt_version="t", schema=ClassReasoning)
    assert lmm.ask(text).value.attributes == ["whiskers"]


def test_a_busy_server_is_retried_but_not_re_asked():
    from openseg_r.lmm import LMMRequest
    from openseg_r.schemas import ClassReasoning

    busy = FakeLMMServer(busy=2)
    try:
        lmm = backend_from_spec(spec_at(busy.url))  # 2 retries by default, after 0.5 s and 1 s
        reply = lmm.ask(
            LMMRequest(
                step="generic_reasoning",
                subject="cat",
                prompt='about the object class "cat"',
                prompt_version="t",
                schema=ClassReasoning,
            )
        )
    finally:
        busy.close()
    assert reply.value.attributes == ["cat shape", "cat texture"]
    assert len(busy.chats) == 3 and len(reply.calls) == 1  # one question, sent three times


def test_lmm_check_predicts_what_a_run_with_the_same_backend_does(smollm_gguf, tiny_args, tmp_path):
    """SmolLM2 (a real, tiny text model) used to be "usable" for the check's toy question,
    while every run with it exited 4: the verdict must say what the run then does."""
    spec = f"hf:{smollm_gguf}"
    options = ["--lmm-option", "max_tokens=96"]
    check = run_cli("lmm", "check", spec, *options)
    run = run_cli(
        "segment",
        ROOT / "examples" / "voc.jpg",
        "--classes",
        "cat, dog",
        "--lmm",
        spec,
        *options,
        *tiny_args,
        "--out",
        tmp_path / "out",
    )
    usable = check.stdout.rstrip().endswith("verdict:   usable")
    assert check.returncode == (0 if usable else EXIT_NO_REASONING), check.stderr
    assert run.returncode == (0 if usable else EXIT_NO_REASONING), (check.stdout, run.stderr)
