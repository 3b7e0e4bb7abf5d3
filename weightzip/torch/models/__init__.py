"""Reference architectures for real-model checks, with the parameter names of their torchvision versions."""

from weightzip.torch.models.mobilenet_v2 import MobileNetV2, imagenet_weights_path, mobilenet_v2

__all__ = ["MobileNetV2", "imagenet_weights_path", "mobilenet_v2"]
