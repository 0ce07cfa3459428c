"""Golden outputs of the NACLIP reference code, for ``tests/test_parity.py``. Run once:

    . .venv/bin/activate
    python tests/golden/make_naclip_golden.py --reference /work/shared/reference/naclip

It imports the reference's ``clip`` package and ``pamr.py`` (NACLIP, github sinahmr/NACLIP
commit 0cac3a6) from ``--reference``, loads into its ``clip.load`` the random weights of
``weights.py`` (the same numpy recipe the tests use for openseg-r), and runs the numerical
parts of ``naclip.py`` lifted below (``forward_feature``, ``forward_slide``, and
``predict``'s resize and PAMR call; no mmseg) on one fixed input: the PASCAL VOC photo
``examples/voc.jpg`` (500x375) resized to NACLIP's inference size for it, 448x336, with
seeded noise of +-2 grey levels (see ``inference_image``).

It writes, under ``tests/data/``:

- ``naclip_golden_inputs.npz``: that 336x448 uint8 image, NACLIP's normalisation constants,
  the original size (375, 500), the class names, their query features (80 ImageNet
  templates, float32, complete) and the pixel rows/columns and feature dimensions that the
  per-variant files keep;
- ``naclip_golden_{naclip,sclip,vanilla}.npz``, one per last-block variant
  (``reduced/naclip``, ``vanilla/csa``, ``vanilla/vanilla``), float32 and subsampled to
  stay small: the L2-normalised patch features of the first 224x224 window and of the
  whole 336x448 image (every 16th of the 512 dimensions), the sliding-window logits
  (224/112) and the whole-image logits at 336x448, the sliding logits resized to
  375x500 and their PAMR refinement (10 steps, dilations 8 and 16), at every 7th pixel
  row and column plus the last (all channels).

The reference stays out of the product and the tests; only these files are committed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from weights import MODEL_NAME, SEED, state_dict  # noqa: E402 (after the path is set)

NAMES = ["person", "dining table", "chair", "wall", "potted plant"]
VARIANTS = {  # openseg-r's name -> NACLIP's set_params(arch, attn_strategy)
    "naclip": ("reduced", "naclip"),
    "sclip": ("vanilla", "csa"),
    "vanilla": ("vanilla", "vanilla"),
}
GAUSSIAN_STD = 5.0
ORIGINAL_SIZE = (375, 500)  # examples/voc.jpg
INFERENCE_SIZE = (336, 448)  # NACLIP's Resize(scale=(2048, 336), keep_ratio=True) of it
MEAN = np.array([122.771, 116.746, 104.094], dtype=np.float32)  # NACLIP's SegDataPreProcessor
STD = np.array([68.501, 66.632, 70.323], dtype=np.float32)
PIXEL_STEP, FEATURE_STEP = 7, 16
CROP, STRIDE, LOGIT_SCALE = 224, 112, 40
PAMR_STEPS, PAMR_DILATIONS = 10, (8, 16)

# NACLIP imports these from prompts/imagenet_template.py (openai_imagenet_template), which is not
# part of the reference folder: OpenAI's 80 ImageNet templates, in their order.
IMAGENET_TEMPLATES = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]


def sample_indices(size: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(0, size, PIXEL_STEP), size - 1]).astype(np.int64)


def import_reference(folder: Path):
    """The reference's ``clip`` package and ``PAMR`` class. Its ``clip.py`` imports
    ``pkg_resources`` only for ``packaging.version``; setuptools >= 80 no longer ships it,
    so a stand-in module providing exactly that is installed when it is missing."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import packaging.version

        shim = types.ModuleType("pkg_resources")
        shim.packaging = types.SimpleNamespace(version=packaging.version)
        sys.modules["pkg_resources"] = shim
    sys.path.insert(0, str(folder))
    import clip
    from pamr import PAMR

    return clip, PAMR


def inference_image() -> np.ndarray:
    """examples/voc.jpg resized (bilinear, half-pixel centres) to 336x448, plus seeded noise of
    at most 2 grey levels, as uint8. The noise keeps the image from being perfectly flat
    anywhere: there PAMR's weights amplify rounding noise (its standard deviation is ~0 and
    divides), which would make the goldens depend on how a CPU rounds a bilinear resize."""
    from PIL import Image

    rgb = np.asarray(Image.open(REPO / "examples" / "voc.jpg").convert("RGB"))
    assert rgb.shape[:2] == ORIGINAL_SIZE, rgb.shape
    pixels = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    pixels = nn.functional.interpolate(pixels, size=INFERENCE_SIZE, mode="bilinear", align_corners=False)
    resized = pixels[0].permute(1, 2, 0).round().numpy()
    noise = np.random.default_rng([SEED, 1]).integers(-2, 3, size=resized.shape)
    return np.clip(resized + noise, 0, 255).astype(np.uint8)


def normalise(image: np.ndarray) -> torch.Tensor:
    """NACLIP's data preprocessor: (pixel - mean) / std on 0..255 RGB, float32, (1, 3, H, W)."""
    return torch.from_numpy((image.astype(np.float32) - MEAN) / STD).permute(2, 0, 1)[None].contiguous()


# ---------------------------------------------------------------- lifted from naclip.py


def query_features(clip, net, names: list[str]) -> torch.Tensor:
    """``NACLIP.__init__``: per name, the normalised mean of the normalised template features."""
    features = []
    with torch.no_grad():
        for name in names:
            query = clip.tokenize([template.format(name) for template in IMAGENET_TEMPLATES])
            feature = net.encode_text(query)
            feature /= feature.norm(dim=-1, keepdim=True)
            feature = feature.mean(dim=0)
            feature /= feature.norm()
            features.append(feature.unsqueeze(0))
    return torch.cat(features, dim=0)


def dense_features(net, img: torch.Tensor) -> torch.Tensor:
    """The first half of ``NACLIP.forward_feature``: normalised patch features (B, gh, gw, D)."""
    image_features = net.encode_image(img, return_all=True)
    image_features = image_features[:, 1:]
    image_features /= image_features.norm(dim=-1, keepdim=True)
    patch = net.visual.patch_size
    return image_features.reshape(img.shape[0], img.shape[-2] // patch, img.shape[-1] // patch, -1)


def forward_feature(net, queries: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """``NACLIP.forward_feature``."""
    image_features = net.encode_image(img, return_all=True)
    image_features = image_features[:, 1:]
    image_features /= image_features.norm(dim=-1, keepdim=True)
    logits = image_features @ queries.T
    patch_size = net.visual.patch_size
    w, h = img[0].shape[-2] // patch_size, img[0].shape[-1] // patch_size
    out_dim = logits.shape[-1]
    logits = logits.permute(0, 2, 1).reshape(-1, out_dim, w, h)
    return nn.functional.interpolate(logits, size=img.shape[-2:], mode="bilinear", align_corners=False)


def forward_slide(net, queries: torch.Tensor, img: torch.Tensor, stride: int = 112, crop_size: int = 224):
    """``NACLIP.forward_slide``."""
    h_stride = w_stride = stride
    h_crop = w_crop = crop_size
    batch_size, _, h_img, w_img = img.shape
    out_channels = queries.shape[0]
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, out_channels, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1 = h_idx * h_stride
            x1 = w_idx * w_stride
            y2 = min(y1 + h_crop, h_img)
            x2 = min(x1 + w_crop, w_img)
            y1 = max(y2 - h_crop, 0)
            x1 = max(x2 - w_crop, 0)
            crop_img = img[:, :, y1:y2, x1:x2]
            crop_seg_logit = forward_feature(net, queries, crop_img)
            preds += nn.functional.pad(
                crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2))
            )
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def predict_resize_and_pamr(PAMR, seg_logits: torch.Tensor, inputs: torch.Tensor, img_size):
    """``NACLIP.predict`` up to ``postprocess_result``: the logits resized to the original size,
    then PAMR guided by the (normalised, inference-size) input resized to that size."""
    seg_logits = nn.functional.interpolate(seg_logits, size=img_size, mode="bilinear", align_corners=False)
    pamr = PAMR(PAMR_STEPS, dilations=PAMR_DILATIONS)
    img = nn.functional.interpolate(inputs, size=img_size, mode="bilinear", align_corners=False)
    return seg_logits, pamr(img, seg_logits.to(img.dtype)).to(seg_logits.dtype)


# ---------------------------------------------------------------- the golden files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=Path("/work/shared/reference/naclip"))
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    args = parser.parse_args()
    clip, PAMR = import_reference(args.reference)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{MODEL_NAME}-seed{SEED}.pt"
        torch.save(state_dict(SEED), path)
        net, _ = clip.load(str(path), device="cpu", jit=False)
    net.eval()

    image = inference_image()
    inputs = normalise(image)
    rows_inf, cols_inf = sample_indices(INFERENCE_SIZE[0]), sample_indices(INFERENCE_SIZE[1])
    rows_ori, cols_ori = sample_indices(ORIGINAL_SIZE[0]), sample_indices(ORIGINAL_SIZE[1])
    dims = np.arange(0, net.visual.proj.shape[1], FEATURE_STEP)

    queries = query_features(clip, net, NAMES)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out / "naclip_golden_inputs.npz",
        image=image,
        mean=MEAN,
        std=STD,
        original_size=np.array(ORIGINAL_SIZE),
        names=np.array(NAMES),
        text_features=queries.numpy().astype(np.float32),
        templates=np.array(IMAGENET_TEMPLATES),
        rows_inference=rows_inf,
        cols_inference=cols_inf,
        rows_original=rows_ori,
        cols_original=cols_ori,
        feature_dims=dims,
        crop=np.array(CROP),
        stride=np.array(STRIDE),
        gaussian_std=np.array(GAUSSIAN_STD),
        pamr_steps=np.array(PAMR_STEPS),
        pamr_dilations=np.array(PAMR_DILATIONS),
        weights_seed=np.array(SEED),
    )
    print(
        f"text features {tuple(queries.shape)}, pairwise cosine max "
        f"{(queries @ queries.T - torch.eye(len(NAMES))).max():.3f}"
    )

    with torch.no_grad():
        for variant, (arch, strategy) in VARIANTS.items():
            net.visual.set_params(arch, strategy, GAUSSIAN_STD)
            window = dense_features(net, inputs[:, :, :CROP, :CROP])[0]
            whole_features = dense_features(net, inputs)[0]
            slide = forward_slide(net, queries, inputs, STRIDE, CROP)
            whole = forward_feature(net, queries, inputs)
            resized, refined = predict_resize_and_pamr(PAMR, slide, inputs, ORIGINAL_SIZE)
            arrays = {
                "window_features": window[..., dims],
                "image_features": whole_features[..., dims],
                "slide_logits": slide[0][:, rows_inf][:, :, cols_inf],
                "whole_logits": whole[0][:, rows_inf][:, :, cols_inf],
                "resized_logits": resized[0][:, rows_ori][:, :, cols_ori],
                "pamr_logits": refined[0][:, rows_ori][:, :, cols_ori],
            }
            for name, value in arrays.items():
                assert torch.isfinite(value).all(), (variant, name)
            np.savez_compressed(
                args.out / f"naclip_golden_{variant}.npz",
                arch=np.array(arch),
                attn_strategy=np.array(strategy),
                **{name: value.numpy().astype(np.float32) for name, value in arrays.items()},
            )
            cosine = whole_features.reshape(-1, whole_features.shape[-1])
            cosine = cosine @ cosine.T
            labels = refined[0].argmax(0)
            print(
                f"{variant:8s} patch cosine mean {cosine.mean():.3f} min {cosine.min():.3f}; "
                f"logits {slide.min():.3f}..{slide.max():.3f} (per-pixel range mean "
                f"{(slide.amax(1) - slide.amin(1)).mean():.4f}); PAMR moved logits by up to "
                f"{(refined - resized).abs().max():.4f}; argmax shares "
                f"{[round(float((labels == k).float().mean()), 3) for k in range(len(NAMES))]}"
            )
    for file in sorted(args.out.glob("naclip_golden*.npz")):
        print(f"{file}: {file.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
