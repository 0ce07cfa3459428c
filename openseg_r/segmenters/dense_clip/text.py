"""CLIP text embeddings of class phrases, averaged over templates and cached.

A phrase's embedding is ``normalise(mean_t normalise(encode(t.format(phrase))))``
(docs/design.md §1.4). Embeddings are cached in memory by (template set, phrase) for one
model, so a vocabulary's embeddings are computed once and reused for every image; with a
``store`` (:mod:`openseg_r.segmenters.text_cache`) they are also kept between processes, keyed
by a hash of the text tower's weights (:func:`text_tower_identity`), so a second process
encodes nothing it has seen before.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from threading import Event, Lock

import open_clip
import torch
import torch.nn.functional as F

from openseg_r._support.cancel import check_cancelled
from openseg_r.prompts.templates import templates_for
from openseg_r.segmenters.dense_clip.loading import LoadedCLIP

TEXT_BATCH = 256
# Bump when the embedding formula or encode_text changes: stored vectors then stop matching.
EMBEDDING_VERSION = "text-embedding-v1"
# What the text path reads in an open_clip CLIP (CustomTextCLIP keeps all of it under `text`).
TEXT_PREFIXES = (
    "token_embedding",
    "positional_embedding",
    "transformer",
    "ln_final",
    "text_projection",
    "attn_mask",
    "text",
)
TEXT_ATTRIBUTES = ("text_pool_type", "context_length", "vocab_size", "text_eos_id", "pad_id")


class TextEmbedder:
    """Phrase embeddings for several threads at once (docs/design.md §3.9).

    No lock is held while the text tower runs or the store is read: ``_lock`` guards only
    the memory cache and the table of phrases in flight, for a few dictionary operations.
    A call encodes its missing phrases one batch (``TEXT_BATCH`` sentences) at a time and
    marks only that batch's phrases as in flight, so a lookup of embedded phrases never
    waits for another call's encoding; a phrase another call is encoding right now is
    awaited, not encoded twice; and a phrase that a long call has not reached yet is
    encoded by whichever call needs it first. Between batches the call reads its
    cancellation flag (:mod:`openseg_r._support.cancel`): abandoned work stops within one batch,
    keeping the phrases it finished."""

    def __init__(self, clip: LoadedCLIP, max_cached: int = 200_000, *, store=None) -> None:
        self.clip = clip
        self.store = store
        self.max_cached = max_cached
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._flights: dict[tuple[str, str], Event] = {}  # phrases being encoded now -> set when done
        self._lock = Lock()  # the memory cache, the flights and the counter; never held while encoding
        self._identity_lock = Lock()
        self._identity: str | None = None  # computed on first use of the store
        self._dim: int | None = text_output_dim(clip.model)
        self.encoded_sentences = 0  # how many sentences went through the text tower

    @property
    def identity(self) -> str:
        """The store's model key: a hash of the text tower (computed once, lazily)."""
        if self._identity is None:
            with self._identity_lock:
                if self._identity is None:
                    self._identity = text_tower_identity(self.clip, self.store)
        return self._identity

    def embed(self, phrases: list[str], template_set: str) -> torch.Tensor:
        """Return (len(phrases), D) float32 embeddings on the model's device: from memory,
        else from the store, else encoded (and then stored). Raises
        :class:`~openseg_r._support.cancel.Cancelled` at the next batch once the current work's
        cancellation flag is set."""
        templates = templates_for(template_set)
        if not phrases:
            raise ValueError("no phrases to embed")
        found: dict[str, torch.Tensor] = {}
        missing = self._remembered(list(dict.fromkeys(phrases)), template_set, found)
        if missing and self.store is not None:
            missing = self._stored(missing, template_set, templates, found)
        per_batch = max(1, TEXT_BATCH // len(templates))
        while missing:
            check_cancelled()
            claimed, awaited = self._claim(missing, template_set, found, per_batch)
            if claimed:
                try:
                    self._encode_batch(claimed, template_set, templates, found)
                finally:
                    self._land(claimed, template_set)
            elif awaited:
                _wait(awaited[0])
            missing = [phrase for phrase in missing if phrase not in found]
        return torch.stack([found[phrase] for phrase in phrases]).to(self.clip.device)

    def _remembered(self, wanted: list[str], template_set: str, found: dict) -> list[str]:
        """Fill ``found`` from memory; return the phrases it lacks."""
        missing = []
        with self._lock:
            for phrase in wanted:
                vector = self._cache.get((template_set, phrase))
                if vector is None:
                    missing.append(phrase)
                else:
                    self._cache.move_to_end((template_set, phrase))
                    found[phrase] = vector
        return missing

    def _stored(self, missing: list[str], template_set: str, templates: tuple[str, ...], found: dict) -> list[str]:
        """Fill ``found`` (and memory) from the store; return the phrases it lacks."""
        stored = self.store.get_many(self.identity, template_key(template_set, templates), missing, dim=self._dim)
        vectors = {phrase: torch.from_numpy(vector.copy()) for phrase, vector in stored.items()}
        found.update(vectors)
        self._remember(vectors, template_set)
        return [phrase for phrase in missing if phrase not in stored]

    def _claim(self, missing: list[str], template_set: str, found: dict, limit: int) -> tuple[list[str], list]:
        """Up to ``limit`` of ``missing`` that nobody is encoding, marked as ours; and the
        flights of those another call is encoding. Phrases that landed meanwhile go to ``found``."""
        claimed, awaited = [], []
        with self._lock:
            for phrase in missing:
                key = (template_set, phrase)
                vector = self._cache.get(key)
                if vector is not None:
                    self._cache.move_to_end(key)
                    found[phrase] = vector
                elif key in self._flights:
                    awaited.append(self._flights[key])
                elif len(claimed) < limit:
                    self._flights[key] = Event()
                    claimed.append(phrase)
        return claimed, awaited

    def _encode_batch(self, claimed: list[str], template_set: str, templates: tuple[str, ...], found: dict) -> None:
        encoded = dict(zip(claimed, self._encode(claimed, templates)))
        found.update(encoded)
        self._remember(encoded, template_set, sentences=len(claimed) * len(templates))
        if self.store is not None:
            self.store.put_many(
                self.identity,
                template_key(template_set, templates),
                {phrase: vector.numpy() for phrase, vector in encoded.items()},
            )

    def _remember(self, vectors: dict[str, torch.Tensor], template_set: str, sentences: int = 0) -> None:
        with self._lock:
            self.encoded_sentences += sentences
            for phrase, vector in vectors.items():
                self._cache[(template_set, phrase)] = vector
                self._cache.move_to_end((template_set, phrase))
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)

    def _land(self, claimed: list[str], template_set: str) -> None:
        """Our flights are over (done, failed or cancelled): their waiters look again."""
        with self._lock:
            for phrase in claimed:
                self._flights.pop((template_set, phrase)).set()

    @torch.inference_mode()
    def _encode(self, phrases: list[str], templates: tuple[str, ...]) -> list[torch.Tensor]:
        sentences = [template.format(phrase) for phrase in phrases for template in templates]
        chunks = []
        for start in range(0, len(sentences), TEXT_BATCH):
            tokens = self.clip.tokenizer(sentences[start : start + TEXT_BATCH]).to(self.clip.device)
            chunks.append(F.normalize(encode_text(self.clip.model, tokens).float(), dim=-1))
        per_sentence = torch.cat(chunks).reshape(len(phrases), len(templates), -1)
        averaged = F.normalize(per_sentence.mean(dim=1), dim=-1)
        return [row.clone() for row in averaged.cpu()]


def _wait(flight: Event) -> None:
    """Wait for another call's batch to land, leaving at once if our own work is cancelled."""
    while not flight.wait(0.05):
        check_cancelled()


def template_key(name: str, templates: tuple[str, ...]) -> str:
    """The store's template-set key: the name and a hash of the sentences, so edited
    templates never meet vectors made with the old ones."""
    return f"{name}:{hashlib.sha256(chr(10).join(templates).encode()).hexdigest()[:16]}"


def text_output_dim(model: torch.nn.Module) -> int | None:
    """The text embedding's size, to reject stored vectors of another size (None: unknown)."""
    projection = getattr(model, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    if isinstance(projection, torch.Tensor) and projection.ndim == 2:
        return int(projection.shape[1])
    for owner in (getattr(model, "text", None), getattr(model, "visual", None)):
        dim = getattr(owner, "output_dim", None)
        if isinstance(dim, int):
            return dim
    return None


def text_tower_identity(clip: LoadedCLIP, store=None) -> str:
    """``sha256:...`` of everything a text embedding depends on: the bytes, names, dtypes
    and shapes of every parameter and buffer on the text path, the tower's structure, the
    tokenizer, the device type and the library versions. Two weights files with the same
    name never share vectors; neither do two random initialisations.

    Hashing ViT-B/16's text tower (250 MB in fp32) takes ~0.17 s on a 2-core CPU, so
    with a store the result is remembered per weights file, by its real path, size and
    mtime (and the loading context). Random weights (``pretrained`` None) are never
    remembered."""
    context = _identity_context(clip)
    memo_key = _weights_file_key(clip.pretrained, context)
    if memo_key is not None and store is not None:
        known = store.recall_identity(memo_key)
        if known:
            return known
    identity = hash_text_tower(clip.model, context)
    if memo_key is not None and store is not None:
        store.remember_identity(memo_key, identity)
    return identity


def hash_text_tower(model: torch.nn.Module, context: str = "") -> str:
    digest = hashlib.sha256(context.encode())
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    text = {name: t for name, t in tensors.items() if name.split(".")[0] in TEXT_PREFIXES} or tensors
    for name in sorted(text):
        tensor = text[name].detach()
        digest.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(memoryview(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return "sha256:" + digest.hexdigest()


def _identity_context(clip: LoadedCLIP) -> str:
    model, tokenizer = clip.model, clip.tokenizer
    modules = [f"{name}={module!r}" for name, module in model.named_children() if name in TEXT_PREFIXES]
    return json.dumps(
        {
            "version": EMBEDDING_VERSION,
            "model_name": clip.model_name,
            "tokenizer": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
            "context_length": getattr(tokenizer, "context_length", None),
            "attributes": {a: repr(getattr(model, a)) for a in TEXT_ATTRIBUTES if hasattr(model, a)},
            "modules": hashlib.sha256("\n".join(modules).encode()).hexdigest(),
            "device": clip.device.type,
            "dtype": str(clip.dtype),
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
        },
        sort_keys=True,
    )


def _weights_file_key(pretrained: str | None, context: str) -> str | None:
    """Memo key for a local weights file; None for random weights and pretrained tags."""
    if not pretrained or not os.path.isfile(pretrained):
        return None
    try:
        real = os.path.realpath(pretrained)
        stat = os.stat(real)
    except OSError:
        return None
    return json.dumps(
        {
            "path": real,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "context": hashlib.sha256(context.encode()).hexdigest(),
        },
        sort_keys=True,
    )


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text``, but on tokens cut after the last end-of-text token.

    For CLIP's causal text tower pooled at the end-of-text token (the argmax), the
    positions after it cannot influence the result, so cutting them gives the same
    embedding several times faster (prompts are ~15 tokens of the 77). Other text
    towers take the plain path.
    """
    causal_argmax = (
        getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "attn_mask", None) is not None
        and hasattr(model, "token_embedding")
        and getattr(model, "text_projection", None) is not None
    )
    if not causal_argmax:
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1
    cut = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(cut).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), cut.argmax(dim=-1)]
    projection = model.text_projection
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
