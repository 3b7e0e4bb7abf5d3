"""ImageNet-style inputs from photos that ship inside installed packages (nothing is downloaded).

scikit-learn bundles two photos (``china.jpg``, ``flower.jpg``) and scikit-image a few more in its
``skimage/data`` folder. :func:`bundled_photos` collects those present; :func:`center_crop_batch` applies
torchvision's evaluation transform (shorter side to 256, centre 224 x 224 crop, ImageNet normalisation)
and :func:`random_crop_batch` adds seeded random-resized crops and flips, to get a few dozen inputs for
comparing a compressed model's predictions with the float model's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from weightzip.core.errors import WeightzipError
from weightzip.torch.models.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD

# Photos in skimage/data that need no download (scikit-image 0.19+ bundles them in the wheel).
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "camera.png", "coins.png")


def bundled_photos() -> dict[str, np.ndarray]:
    """name -> RGB uint8 image (H, W, 3) for every bundled photo found (grey ones are made RGB)."""
    from PIL import Image

    photos: dict[str, np.ndarray] = {}
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for filename, image in zip(sample.filenames, sample.images):
            photos[Path(filename).stem] = np.asarray(image, dtype=np.uint8)
    except ImportError:
        pass
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
        for filename in SKIMAGE_PHOTOS:
            if (folder / filename).is_file():
                with Image.open(folder / filename) as image:
                    photos[Path(filename).stem] = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if not photos:
        raise WeightzipError("no bundled photos found: install scikit-learn and/or scikit-image")
    return photos


def _normalise(image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (tensor - mean) / std


def center_crop(image: np.ndarray, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """torchvision's evaluation transform: shorter side to `resize` (bilinear), centre `crop` square."""
    from PIL import Image

    picture = Image.fromarray(image)
    width, height = picture.size
    scale = resize / min(width, height)
    picture = picture.resize((max(crop, round(width * scale)), max(crop, round(height * scale))),
                             Image.Resampling.BILINEAR)
    left, top = (picture.size[0] - crop) // 2, (picture.size[1] - crop) // 2
    return _normalise(picture.crop((left, top, left + crop, top + crop)))


def random_crop(image: np.ndarray, rng: np.random.Generator, crop: int = 224) -> torch.Tensor:
    """A random-resized crop (35-100 % of the area, aspect 3/4-4/3), flipped left-right half the time."""
    from PIL import Image

    picture = Image.fromarray(image)
    width, height = picture.size
    for _ in range(20):
        area = width * height * rng.uniform(0.35, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        w, h = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            break
    else:
        w = h = min(width, height)
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    picture = picture.crop((left, top, left + w, top + h)).resize((crop, crop), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _normalise(picture)


def photo_batch(crops_per_photo: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Every bundled photo's centre crop plus `crops_per_photo` random crops: (N, 3, 224, 224) and names."""
    rng = np.random.default_rng(seed)
    images, names = [], []
    for name, photo in bundled_photos().items():
        images.append(center_crop(photo))
        names.append(name)
        for index in range(crops_per_photo):
            images.append(random_crop(photo, rng))
            names.append(f"{name}#crop{index}")
    return torch.stack(images), names
