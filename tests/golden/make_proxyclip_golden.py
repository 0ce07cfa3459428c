# ruff: noqa: E741  (the lifted reference code keeps its own names: I, J, l, t)
"""Golden outputs of the ProxyCLIP reference code, for ``tests/test_proxyclip_parity.py``. Run once:

    HF_HUB_OFFLINE=1 python tests/golden/make_proxyclip_golden.py --reference /work/shared/reference/proxyclip

It runs the reference's own code (github mc-lan/ProxyCLIP, commit e7b767f; NTU S-Lab License
1.0) at random weights, with no download and no mmseg:

- the vision tower is the reference fork's ``open_clip/transformer.py`` ``VisionTransformer``
  (its ``forward`` with ``ex_feats``, ``custom_attn`` and ``interpolate_pos_encoding``),
  imported as a package of another name so it does not clash with the installed open_clip,
  holding the ``ViT-B-16-quickgelu`` weights of ``weights.py``;
- the VFM is the reference folder's ``dino/vision_transformer.py`` ``VisionTransformer``
  (what ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb8')`` builds, at 2 blocks)
  holding the weights of ``dino_weights.py``;
- ``forward_feature`` (its ``dino`` branch) and ``forward_slide`` are lifted below from
  ``proxyclip_segmentor.py`` (that file imports mmseg, segment_anything and mae), with the
  query features of its ``__init__`` (the 80 ImageNet templates of its ``prompts``).

Inputs: the 336x448 image of ``naclip_golden_inputs.npz`` (the VOC photo at the inference
size, with seeded noise), normalised with the reference's SegDataPreProcessor constants,
and its top-left 300x420 crop (windows of 300x336, padded to 336x336 by the reference).

It writes ``tests/data/proxyclip_golden.npz`` (float32): the DINO features of the first
336x336 window (every 32nd channel), the proxy-attention features of that window
(normalised, every 32nd dimension), the sliding-window logits before and after the resize
to the original size (375x500) for the full image and before it for the crop (every 7th
pixel row and column plus the last), and the query features (complete).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from dino_weights import DINO_SEED, PATCH, dino_state_dict  # noqa: E402
from weights import SEED, open_clip_model, state_dict  # noqa: E402

NAMES = ["person", "dining table", "chair", "wall", "potted plant"]
ORIGINAL_SIZE = (375, 500)
CROP_SIZE = (300, 420)
MEAN = np.array([122.771, 116.746, 104.094], dtype=np.float32)  # the reference's SegDataPreProcessor
STD = np.array([68.501, 66.632, 70.323], dtype=np.float32)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
PIXEL_STEP, FEATURE_STEP = 7, 32
SLIDE_CROP, SLIDE_STRIDE, BETA, GAMMA = 336, 112, 1.2, 3.0


def reference_modules(reference: Path):
    """The fork's transformer module (as ``proxyclip_open_clip``), DINO's module, the templates."""
    import open_clip.utils as installed_utils

    package = types.ModuleType("proxyclip_open_clip")
    package.__path__ = [str(reference / "open_clip")]
    sys.modules["proxyclip_open_clip"] = package
    sys.modules["proxyclip_open_clip.utils"] = installed_utils  # to_2tuple; the fork's utils.py is not shipped
    transformer = importlib.import_module("proxyclip_open_clip.transformer")
    sys.path.insert(0, str(reference / "dino"))  # its vision_transformer imports its utils as a top-level module
    dino = importlib.import_module("vision_transformer")
    spec = importlib.util.spec_from_file_location("proxyclip_templates", reference / "prompts" / "imagenet_template.py")
    templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(templates)
    return transformer, dino, templates.openai_imagenet_template


def reference_clip_visual(transformer):
    visual = transformer.VisionTransformer(
        image_size=224,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        mlp_ratio=4.0,
        output_dim=512,
        act_layer=transformer.QuickGELU,
    )
    weights = {k.removeprefix("visual."): v for k, v in state_dict(SEED).items() if k.startswith("visual.")}
    visual.load_state_dict(weights)
    return visual.eval()


def reference_dino(dino):
    vfm = dino.VisionTransformer(
        patch_size=PATCH,
        embed_dim=768,
        depth=2,
        num_heads=12,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0,
    )
    vfm.load_state_dict(dino_state_dict(DINO_SEED))
    return vfm.eval()


class UnNormalize:  # the reference's myutils.UnNormalize
    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    def __call__(self, image):
        image2 = torch.clone(image)
        for t, m, s in zip(image2, self.mean, self.std):
            t.mul_(s).add_(m)
        return image2


# ---------------------------------------------------------------- lifted from proxyclip_segmentor.py


class Lifted:
    def __init__(self, visual, vfm, query_features):
        from torchvision import transforms

        self.visual, self.vfm, self.query_features = visual, vfm, query_features
        self.unnorm = UnNormalize(CLIP_MEAN, CLIP_STD)
        self.norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        self.record = {}

    @torch.no_grad()
    def forward_feature(self, img, logit_size=None):
        imgs_norm = torch.stack([self.norm(self.unnorm(img[i])) for i in range(len(img))], dim=0)
        feat = self.vfm.get_intermediate_layers(imgs_norm)[0]
        nb_im = feat.shape[0]
        patch_size = self.vfm.patch_embed.patch_size
        I, J = imgs_norm[0].shape[-2] // patch_size, imgs_norm[0].shape[-2] // patch_size
        ex_feats = feat[:, 1:, :].reshape(nb_im, I, J, -1).permute(0, 3, 1, 2)
        image_features = self.visual(img, ex_feats, BETA, GAMMA)
        image_features /= image_features.norm(dim=-1, keepdim=True)
        self.record.setdefault("vfm", ex_feats)
        self.record.setdefault("features", image_features)
        logits = image_features @ self.query_features.T
        logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], I, J)
        size = img.shape[-2:] if logit_size is None else logit_size
        return nn.functional.interpolate(logits, size=size, mode="bilinear")

    def forward_slide(self, img, ori_shape, stride=112, crop_size=336):
        h_stride, w_stride = stride, stride
        h_crop, w_crop = crop_size, crop_size
        batch_size, _, h_img, w_img = img.shape
        out_channels = self.query_features.shape[0]
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = img.new_zeros((batch_size, out_channels, h_img, w_img))
        count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                y1, x1 = h_idx * h_stride, w_idx * w_stride
                y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                crop_img = img[:, :, y1:y2, x1:x2]
                H, W = crop_img.shape[2:]
                pad = compute_padsize(H, W, 56)
                if any(pad):
                    crop_img = nn.functional.pad(crop_img, pad)
                crop_seg_logit = self.forward_feature(crop_img).detach()
                if any(pad):
                    l, t = pad[0], pad[2]
                    crop_seg_logit = crop_seg_logit[:, :, t : t + H, l : l + W]
                preds += nn.functional.pad(
                    crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2))
                )
                count_mat[:, :, y1:y2, x1:x2] += 1
        assert (count_mat == 0).sum() == 0
        preds = preds / count_mat
        return preds, nn.functional.interpolate(preds, size=ori_shape, mode="bilinear")


def compute_padsize(H: int, W: int, patch_size: int):
    l, r, t, b = 0, 0, 0, 0
    if W % patch_size:
        lr = patch_size - (W % patch_size)
        l = lr // 2
        r = lr - l
    if H % patch_size:
        tb = patch_size - (H % patch_size)
        t = tb // 2
        b = tb - t
    return l, r, t, b


# ---------------------------------------------------------------- the goldens


def query_features(templates) -> torch.Tensor:
    """The reference's ``__init__``: per name, the normalised mean of the normalised template
    features (the text tower is not modified by ProxyCLIP: the installed open_clip's)."""
    import open_clip

    clip = open_clip_model(SEED)
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    rows = []
    with torch.no_grad():
        for name in NAMES:
            feature = clip.encode_text(tokenizer([template(name) for template in templates]))
            feature /= feature.norm(dim=-1, keepdim=True)
            feature = feature.mean(dim=0)
            rows.append((feature / feature.norm())[None])
    return torch.cat(rows)


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.unique(np.r_[np.arange(0, height, PIXEL_STEP), height - 1])
    cols = np.unique(np.r_[np.arange(0, width, PIXEL_STEP), width - 1])
    return rows, cols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the reference proxyclip/ folder")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    transformer, dino, templates = reference_modules(args.reference.resolve())
    with np.load(REPO / "tests" / "data" / "naclip_golden_inputs.npz") as inputs:
        image = inputs["image"]
    queries = query_features(templates)
    lifted = Lifted(reference_clip_visual(transformer), reference_dino(dino), queries)
    normalised = torch.from_numpy((image.astype(np.float32) - MEAN) / STD).permute(2, 0, 1)[None].contiguous()
    slide, resized = lifted.forward_slide(normalised, ORIGINAL_SIZE, SLIDE_STRIDE, SLIDE_CROP)
    first = dict(lifted.record)  # the first window's (the top-left 336x336)
    crop = normalised[:, :, : CROP_SIZE[0], : CROP_SIZE[1]].contiguous()
    crop_slide, _ = lifted.forward_slide(crop, CROP_SIZE, SLIDE_STRIDE, SLIDE_CROP)
    rows, cols = pixel_grid(*image.shape[:2])
    orig_rows, orig_cols = pixel_grid(*ORIGINAL_SIZE)
    crop_rows, crop_cols = pixel_grid(*CROP_SIZE)
    out = {
        "weights_seed": np.array(SEED),
        "dino_seed": np.array(DINO_SEED),
        "names": np.array(NAMES),
        "mean": MEAN,
        "std": STD,
        "query_features": queries.numpy().astype(np.float32),
        "vfm_first_window": first["vfm"][0, ::FEATURE_STEP].numpy(),
        "features_first_window": first["features"][0, :, ::FEATURE_STEP].numpy(),
        "rows": rows,
        "cols": cols,
        "slide_logits": slide[0][:, rows][:, :, cols].numpy(),
        "orig_rows": orig_rows,
        "orig_cols": orig_cols,
        "resized_logits": resized[0][:, orig_rows][:, :, orig_cols].numpy(),
        "crop_rows": crop_rows,
        "crop_cols": crop_cols,
        "crop_slide_logits": crop_slide[0][:, crop_rows][:, :, crop_cols].numpy(),
    }
    target = REPO / "tests" / "data" / "proxyclip_golden.npz"
    np.savez_compressed(target, **out)
    print(f"wrote {target} ({target.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
