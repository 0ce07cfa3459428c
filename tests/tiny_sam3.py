"""A tiny random SAM 3, saved as a model folder the way the hub ships one, built offline.

The sizes follow transformers' own SAM 3 tests. The processor's tokenizer is CLIP's BPE
tokenizer, written from the BPE merges open_clip ships (its vocabulary is the byte
alphabet, the same with ``</w>``, then the merges, then the two special tokens), so the
token ids are CLIP's.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import open_clip
import torch


def _byte_alphabet() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(line.split()) for line in gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 1]]
    alphabet = _byte_alphabet()
    vocab = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")


def tiny_sam3_config(queries: int = 5):
    from transformers import Sam3Config
    from transformers.models.sam3.configuration_sam3 import (
        Sam3DETRDecoderConfig,
        Sam3DETREncoderConfig,
        Sam3GeometryEncoderConfig,
        Sam3MaskDecoderConfig,
        Sam3VisionConfig,
        Sam3ViTConfig,
    )

    small = {"num_attention_heads": 4, "intermediate_size": 64}
    backbone = Sam3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        image_size=224,
        patch_size=14,
        window_size=8,
        global_attn_indexes=[0, 1],
        **small,
    )
    return Sam3Config(
        vision_config=Sam3VisionConfig(backbone_config=backbone, fpn_hidden_size=32, scale_factors=[2.0, 1.0]),
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "max_position_embeddings": 32,
            "hidden_act": "gelu",
            **small,
        },
        geometry_encoder_config=Sam3GeometryEncoderConfig(
            hidden_size=32, num_layers=1, mask_fuser_hidden_size=32, mask_fuser_num_layers=1, **small
        ),
        detr_encoder_config=Sam3DETREncoderConfig(hidden_size=32, num_layers=1, **small),
        detr_decoder_config=Sam3DETRDecoderConfig(hidden_size=32, num_layers=1, num_queries=queries, **small),
        mask_decoder_config=Sam3MaskDecoderConfig(hidden_size=32, num_upsampling_stages=2),
    )


def save_tiny_sam3(folder: Path, seed: int = 0) -> Path:
    """A random tiny SAM 3 and its processor (224-pixel images) saved in ``folder``."""
    from transformers import Sam3Model, Sam3Processor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config()).eval()
    tokenizer = clip_tokenizer(folder / "tokenizer-source")
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": 224, "width": 224}), tokenizer=tokenizer
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
