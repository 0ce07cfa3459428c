"""Local Hugging Face models, in-process, through transformers.

- Vision-language models (a config with ``vision_config``, e.g. the Qwen2.5-VL
  family the method was built with): ``AutoModelForImageTextToText`` and
  ``AutoProcessor`` with the model's chat template.
- Text-only causal LMs, including GGUF files (``model`` ending in ``.gguf``, or
  ``gguf_file=``): ``AutoModelForCausalLM``. They can do generic reasoning; asked
  about an image they raise, and the node records a fallback.

The device is the GPU when there is one; the dtype bf16 on a GPU that supports it,
else fp16 on a GPU, else fp32. Generation is greedy (deterministic) by default; a
``temperature`` above 0 samples. ``timeout`` bounds one generation (``max_time``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from threading import Lock

from PIL import Image

from openseg_r.config.settings import LMMOptions
from openseg_r.errors import ConfigError
from openseg_r.lmm.base import BaseLMMBackend, LMMRequest, reask_text
from openseg_r.lmm.health import RequestUnsupported
from openseg_r.schemas import Usage


class HuggingFaceLMM(BaseLMMBackend):
    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        gguf_file: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        max_attempts: int = 2,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoConfig

        if gguf_file is None and model.endswith(".gguf"):
            path = Path(model)
            if not path.is_file():  # else transformers reads the folder as a hub repo id and says so
                raise ConfigError(
                    f"GGUF model file not found: {model}"
                    if not path.exists()
                    else f"the GGUF model is not a regular file: {model}"
                )
            model, gguf_file = str(path.parent), path.name
        self.model_id = f"{model}:{gguf_file}" if gguf_file else model
        self.max_attempts = max_attempts
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature: float | None = None  # sampling temperature when do_sample (None: the model's)
        self.max_time: float | None = None  # seconds one generation may take (None: no bound)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _dtype(dtype, self.device)
        self._lock = Lock()  # one generate at a time: the model is not re-entrant
        kwargs = {"trust_remote_code": trust_remote_code}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        try:
            config = AutoConfig.from_pretrained(model, **kwargs)
            self.supports_images = hasattr(config, "vision_config") and not gguf_file
            with _no_progress_bars():  # a local load needs no bar on stderr
                self._load(model, kwargs)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load Hugging Face model {self.model_id!r}: {str(exc).splitlines()[0][:300]}"
            ) from None

    def _load(self, model: str, kwargs: dict) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        if self.supports_images:
            self.processor = AutoProcessor.from_pretrained(model, **kwargs)
            self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
            network = AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype, **kwargs)
        else:
            self.processor = self.tokenizer = AutoTokenizer.from_pretrained(model, **kwargs)
            network = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype, **kwargs)
        self.model = network.to(self.device).eval()

    def apply_options(self, options: LMMOptions) -> None:
        super().apply_options(options)
        if options.max_tokens is not None:
            self.max_new_tokens = options.max_tokens
        if options.temperature is not None:
            self.do_sample = options.temperature > 0
            self.temperature = options.temperature if self.do_sample else None
        if options.timeout is not None:
            self.max_time = options.timeout

    def effective_options(self) -> dict:
        return {
            "max_tokens": self.max_new_tokens,
            "timeout": self.max_time,
            "temperature": (self.temperature if self.do_sample else 0.0),
            "max_attempts": self.max_attempts,
        }

    @property
    def generation_params(self) -> dict:
        params = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample and self.temperature is not None:
            params["temperature"] = self.temperature
        return params

    def complete(self, request: LMMRequest, feedback: str | None = None) -> tuple[str, Usage]:
        import torch

        if request.images and not self.supports_images:
            raise RequestUnsupported(f"{self.model_id} is a text-only model and cannot look at images")
        text = reask_text(request.prompt, feedback)
        if self.supports_images:
            content = [{"type": "image", "image": Image.fromarray(image)} for image in request.images]
            messages = [{"role": "user", "content": content + [{"type": "text", "text": text}]}]
        else:
            messages = [{"role": "user", "content": text}]
        inputs = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(self.device)
        prompt_length = int(inputs["input_ids"].shape[1])
        options = {}
        if self.do_sample and self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_time is not None:
            options["max_time"] = self.max_time
        with self._lock, torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=self.do_sample,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                **options,
            )
        new_tokens = output[0, prompt_length:]
        answer = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return answer, Usage(prompt_tokens=prompt_length, completion_tokens=int(new_tokens.shape[0]))


@contextmanager
def _no_progress_bars():
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _dtype(name: str | None, device):
    import torch

    if name:
        try:
            return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
        except KeyError:
            raise ConfigError(f"unknown dtype {name!r}; choose fp32, fp16 or bf16") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
