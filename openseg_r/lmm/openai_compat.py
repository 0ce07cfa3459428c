"""Any OpenAI-compatible chat server: vLLM, SGLang, Ollama's /v1, llama.cpp server,
LM Studio, ``transformers serve``, or OpenAI itself, through langchain-openai.

- Images go as langchain-core standard image content blocks (base64 PNG), downscaled
  so the long side is at most ``max_image_side`` pixels.
- The server's JSON-schema structured output is used when it has it. If the server
  rejects ``response_format``, the backend switches to prompt-plus-parse for the
  rest of its life (the prompt already asks for JSON) and records that it did.
- ``timeout`` bounds each request as a whole, its retries included, whatever the server
  sends. A rate limit or a server error (5xx) is retried ``max_retries`` times with
  exponential backoff within it; no complete answer within it makes the backend unusable
  for the run;
  a server that cannot be reached, a rejected key or a missing model is not retried
  (see :mod:`openseg_r.lmm.health`): before the first request, and after such a
  failure, one ``GET /models`` says whether the server is there.
- The API key is read from the environment and held as a secret; it is never logged
  or recorded.
"""

from __future__ import annotations

import base64
import io
import os
from threading import Lock

import numpy as np
from PIL import Image

from openseg_r.config.settings import LMMOptions
from openseg_r.lmm.base import BaseLMMBackend, LMMRequest, reask_text
from openseg_r.lmm.deadline import Deadline, RequestTimedOut, run_abandonable, sleep_unless_cancelled
from openseg_r.lmm.health import BackendUnavailable, unavailable_cause
from openseg_r.schemas import Usage

DEFAULT_API_KEY_ENVS = ("OPENSEG_R_API_KEY", "OPENAI_API_KEY")
OLLAMA_URL = "http://127.0.0.1:11434/v1"
OPENAI_URL = "https://api.openai.com/v1"
PROBE_CONNECT_TIMEOUT = 10.0  # seconds the reachability check waits for a connection
MAX_BACKOFF = 8.0


class OpenAICompatibleLMM(BaseLMMBackend):
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        structured_output: str = "auto",
        max_image_side: int = 1344,
        max_attempts: int = 2,
        kind: str = "openai",
    ) -> None:
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr

        if structured_output not in ("auto", "json_schema", "off"):
            raise ValueError("structured_output must be auto, json_schema or off")
        envs = (api_key_env,) if api_key_env else DEFAULT_API_KEY_ENVS
        key = next((os.environ[e] for e in envs if os.environ.get(e)), None)
        self.name = kind
        self.model_id = model
        self.base_url = base_url
        self.max_attempts = max_attempts
        self.max_retries = max_retries
        self.structured_output = structured_output
        self.structured_output_rejected: str | None = None  # the server's reason, once it said no
        self.max_image_side = max_image_side
        self.listed_models: list[str] | None = None  # what GET /models listed, once it was asked
        self._temperature, self._max_tokens, self._timeout = temperature, max_tokens, timeout
        self._key = SecretStr(key or "no-key")  # local servers need no key; the client insists on one
        self._lock = Lock()
        self._chat_class = ChatOpenAI
        self._build_chat()

    def _build_chat(self) -> None:
        # Retries are ours (see _invoke): the client's would retry a refused connection too.
        self.chat = self._chat_class(
            model=self.model_id,
            base_url=self.base_url,
            api_key=self._key,
            timeout=self._timeout,
            max_retries=0,
            temperature=self._temperature,
            max_tokens=self._max_tokens,
        )

    def apply_options(self, options: LMMOptions) -> None:
        super().apply_options(options)
        if options.max_tokens is not None:
            self._max_tokens = options.max_tokens
        if options.temperature is not None:
            self._temperature = options.temperature
        if options.timeout is not None:
            self._timeout = options.timeout
        self._build_chat()

    def effective_options(self) -> dict:
        return {
            "max_tokens": self._max_tokens,
            "timeout": self._timeout,
            "temperature": self._temperature,
            "max_attempts": self.max_attempts,
            "max_retries": self.max_retries,
        }

    @property
    def generation_params(self) -> dict:
        return {"temperature": self._temperature, "max_tokens": self._max_tokens}

    @property
    def location(self) -> str:
        return (self.base_url or OPENAI_URL).rstrip("/")

    def list_models(self) -> list[str]:
        """The model ids the server lists (``GET /models``); raises what the client raises."""
        import httpx

        timeout = httpx.Timeout(self._timeout, connect=min(self._timeout, PROBE_CONNECT_TIMEOUT))
        client = self.chat.root_client.with_options(timeout=timeout, max_retries=0)
        try:
            page = run_abandonable(client.models.list, self._timeout)
        except RequestTimedOut:
            raise BackendUnavailable(self._timed_out()) from None
        models = [str(getattr(model, "id", "")) for model in getattr(page, "data", [])]
        self.listed_models = models
        return models

    def probe(self) -> str | None:
        """Can the server be reached, and does it take the key? Any other HTTP answer (a
        server without ``/models`` says 404) means it is there."""
        try:
            self.list_models()
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and status not in (401, 403):
                return None
            return unavailable_cause(exc)
        return None

    def complete(self, request: LMMRequest, feedback: str | None = None) -> tuple[str, Usage]:
        from langchain_core.messages import HumanMessage

        content: list[dict] = [{"type": "text", "text": reask_text(request.prompt, feedback)}]
        content += [image_block(image, self.max_image_side) for image in request.images]
        messages = [HumanMessage(content=content)]
        if self._use_schema():
            try:
                # Sent as a plain body field: langchain's own response_format path parses the
                # answer itself and would hide a truncated or malformed answer from us.
                return self._invoke(messages, extra_body={"response_format": json_schema_format(request.schema)})
            except Exception as exc:
                if self.structured_output == "json_schema" or not _is_rejected_request(exc):
                    raise
                with self._lock:
                    self.structured_output_rejected = f"{type(exc).__name__}: {str(exc)[:200]}"
        return self._invoke(messages)

    def _use_schema(self) -> bool:
        return self.structured_output == "json_schema" or (
            self.structured_output == "auto" and self.structured_output_rejected is None
        )

    def _invoke(self, messages, **kwargs) -> tuple[str, Usage]:
        """One request, retried after a transient failure (rate limit, 5xx), all within one
        deadline of ``timeout`` seconds, whatever the server sends (a reply dripping a byte
        a second included): past it, the backend is unusable for this run. Ctrl-C, SIGTERM
        or the work's cancel token abandon it at once (:mod:`openseg_r.lmm.deadline`)."""
        deadline = Deadline(self._timeout)
        for retry in range(self.max_retries + 1):
            try:
                return run_abandonable(lambda: self._invoke_once(messages, **kwargs), deadline.left())
            except RequestTimedOut:
                raise BackendUnavailable(self._timed_out()) from None
            except Exception as exc:
                if retry >= self.max_retries or not _is_transient(exc):
                    raise
                pause = min(MAX_BACKOFF, 0.5 * 2**retry)
                if deadline.left() <= pause:
                    raise BackendUnavailable(self._timed_out()) from exc
                sleep_unless_cancelled(pause)
        raise AssertionError("unreachable")

    def _timed_out(self) -> str:
        return (
            f"timed out: no complete answer within the {self._timeout:g} s timeout, retries included "
            "(raise it with --lmm-option timeout=SECONDS)"
        )

    def _invoke_once(self, messages, **kwargs) -> tuple[str, Usage]:
        reply = self.chat.invoke(messages, **kwargs)
        usage = reply.usage_metadata or {}
        return message_text(reply.content), Usage(
            prompt_tokens=int(usage.get("input_tokens", 0) or 0),
            completion_tokens=int(usage.get("output_tokens", 0) or 0),
        )


def json_schema_format(schema) -> dict:
    return {
        "type": "json_schema",
        "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": False},
    }


def image_block(image: np.ndarray, max_side: int) -> dict:
    """A langchain-core standard image content block holding a base64 PNG."""
    picture = Image.fromarray(image)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return {"type": "image", "base64": base64.b64encode(buffer.getvalue()).decode("ascii"), "mime_type": "image/png"}


def message_text(content) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _is_rejected_request(exc: Exception) -> bool:
    """A 4xx answer to the request itself (e.g. no response_format support), not a network
    failure, a refused key, a missing model (404) or a rate limit."""
    status = _status(exc)
    return status is not None and 400 <= status < 500 and status not in (401, 403, 404, 408, 409, 429)


def _is_transient(exc: Exception) -> bool:
    """Worth the same request again after a pause: a rate limit, a server error, a reply
    slower than the timeout. Never a backend that cannot be reached."""
    if unavailable_cause(exc) is not None:
        return False
    status = _status(exc)
    if status is not None:
        return status in (408, 409, 429) or status >= 500
    return any(kind.__name__ == "APITimeoutError" for kind in type(exc).__mro__)
