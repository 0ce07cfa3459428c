"""Any OpenAI-compatible chat server: vLLM, SGLang, Ollama's /v1, llama.cpp server,
LM Studio, ``transformers serve``, or OpenAI itself, through langchain-openai.

- Images go as langchain-core standard image content blocks (base64 PNG), downscaled
  so the long side is at most ``max_image_side`` pixels.
- The server's JSON-schema structured output is used when it has it. If the server
  rejects ``response_format``, the backend switches to prompt-plus-parse for the
  rest of its life (the prompt already asks for JSON) and records that it did.
- Timeouts and bounded retries with exponential backoff come from the OpenAI
  client (``timeout``, ``max_retries``). The API key is read from the environment
  and held as a secret; it is never logged or recorded.
"""

from __future__ import annotations

import base64
import io
import os
from threading import Lock

import numpy as np
from PIL import Image

from openseg_r.lmm.base import BaseLMMBackend, LMMRequest, reask_text
from openseg_r.state import Usage

DEFAULT_API_KEY_ENVS = ("OPENSEG_R_API_KEY", "OPENAI_API_KEY")
OLLAMA_URL = "http://127.0.0.1:11434/v1"


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
        self.structured_output = structured_output
        self.structured_output_rejected: str | None = None  # the server's reason, once it said no
        self.max_image_side = max_image_side
        self._temperature, self._max_tokens = temperature, max_tokens
        self._lock = Lock()
        self.chat = ChatOpenAI(
            model=model,
            base_url=base_url,
            # Local servers need no key; the client insists on one, so send a placeholder.
            api_key=SecretStr(key or "no-key"),
            timeout=timeout,
            max_retries=max_retries,
            temperature=temperature,
            max_tokens=max_tokens,
        )

    @property
    def generation_params(self) -> dict:
        return {"temperature": self._temperature, "max_tokens": self._max_tokens}

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


def _is_rejected_request(exc: Exception) -> bool:
    """A 4xx answer to the request itself (e.g. no response_format support), not a network failure."""
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 429)
