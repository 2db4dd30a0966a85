"""fashion-cnn: a small residual CNN on Fashion-MNIST, the zoo's task with real labels.

The network follows the basic block of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016):
conv-BN-ReLU-conv-BN plus an identity (or 1x1 projection) shortcut, then ReLU. `bench/train_fashion.py`
trains it; the checkpoint ships in lowbit/zoo/weights/.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowbit import metrics
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.task import ZooTask, batched

# Mean and standard deviation of the 60k training pixels scaled to [0, 1] (tests recompute them).
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530
NUM_CLASSES = 10
WIDTHS = (16, 32, 64)
CHECKPOINT = Path(__file__).resolve().parent / "weights" / "fashion_cnn.pt"
PIXEL_MAX = 255.0
BATCH = 100
DEFAULT_CALIB = 512
DEFAULT_EVAL = 10_000


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] (or [N, 1, 28, 28]) -> float32 [N, 1, 28, 28], standardised (training stats)."""
    if images.dtype != torch.uint8:
        raise TypeError(
            f"normalize expects uint8 pixels, got {images.dtype}; pass the images from fashion_mnist()"
        )
    x = images.float().div(PIXEL_MAX)
    if x.dim() == 3:
        x = x.unsqueeze(1)  # [N, 28, 28] -> [N, 1, 28, 28]
    return (x - FASHION_MEAN) / FASHION_STD


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add; a 1x1 conv-BN projects the shortcut if shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class FashionCNN(nn.Module):
    """Stem conv, residual blocks at 28, 14 and 7 pixels, global average pool, linear head (78k params)."""

    def __init__(self, widths: tuple[int, int, int] = WIDTHS, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = BasicBlock(w1, w1)
        self.layer2 = BasicBlock(w1, w2, stride=2)
        self.layer3 = BasicBlock(w2, w3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def pretrained(path: Path = CHECKPOINT) -> FashionCNN:
    """The shipped checkpoint (fp32, eval mode)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `python bench/train_fashion.py` to recreate it")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = FashionCNN()
    model.load_state_dict(state["model"])
    return model.eval()


def _calib_indices(n_train: int, n_calib: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(n_train, generator=generator)[:n_calib]


def load(n_calib: int | None = None, n_eval: int | None = None) -> ZooTask:
    """Calibration: a fixed random sample of the training split. Evaluation: the first n_eval test images."""
    n_calib = DEFAULT_CALIB if n_calib is None else n_calib
    n_eval = DEFAULT_EVAL if n_eval is None else n_eval
    train_x, _ = fashion_mnist("train")
    test_x, test_y = fashion_mnist("test")
    calib_x = normalize(train_x[_calib_indices(len(train_x), n_calib)])
    eval_x, eval_y = normalize(test_x[:n_eval]), test_y[:n_eval]

    def finish(outputs: list[torch.Tensor]) -> dict[str, float]:
        logits = torch.cat(outputs)
        return {"accuracy": metrics.top1_accuracy(logits, eval_y)}

    return ZooTask(
        name="fashion-cnn",
        model=pretrained(),
        calib=batched(calib_x, size=BATCH),
        eval=batched(eval_x, size=BATCH),
        example_inputs=(eval_x[:2],),
        finish=finish,
        primary_metric="accuracy",
        higher_is_better=True,
        input_names=("images",),
        output_names=("logits",),
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
