"""Images: read a frame (a file, or one frame of a folder of frames) and the train / eval transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from cign_fast.data.skips import CORRUPT_IMAGE, MISSING_VISUAL, ClipDecodeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_IMAGE_PIXELS = 4096 * 4096  # larger frames are skipped (``corrupt_image``) before they are decoded
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_transform(image_size: int, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> [3, image_size, image_size] float32, ImageNet-normalised.

    train: resize to round(246/224 * image_size) square (bicubic), random crop, random horizontal flip;
    eval: resize to image_size square (bicubic).
    """
    bicubic = transforms.InterpolationMode.BICUBIC
    if train:
        enlarged = round(246 / 224 * image_size)
        geometry = [
            transforms.Resize((enlarged, enlarged), interpolation=bicubic, antialias=True),
            transforms.RandomCrop(image_size),
            transforms.RandomHorizontalFlip(),
        ]
    else:
        geometry = [transforms.Resize((image_size, image_size), interpolation=bicubic, antialias=True)]
    return transforms.Compose([*geometry, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def frame_files(folder: Path) -> list[Path]:
    """Image files of a frame folder, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def choose_frame(visual_path: Path, train: bool) -> Path:
    """``visual_path`` itself for an image file; for a frame folder a random frame (train) or the middle one.

    The random choice uses torch's generator, so DataLoader worker seeding and ``torch.manual_seed`` apply.
    """
    if not visual_path.is_dir():
        return visual_path
    frames = frame_files(visual_path)
    if not frames:
        raise ClipDecodeError(MISSING_VISUAL, visual_path, "frame folder holds no image")
    index = int(torch.randint(len(frames), ()).item()) if train else len(frames) // 2
    return frames[index]


def read_rgb(path: Path) -> Image.Image:
    """Decoded RGB image; raises :class:`ClipDecodeError` (``corrupt_image``: undecodable or more than
    :data:`MAX_IMAGE_PIXELS` pixels, read from the header before decoding; ``missing_visual``: the file is gone)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ClipDecodeError(
                    CORRUPT_IMAGE,
                    path,
                    f"image of {width} x {height} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels (4096 x 4096)",
                )
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise ClipDecodeError(MISSING_VISUAL, path, "image file disappeared") from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:  # UnidentifiedImageError is an OSError
        raise ClipDecodeError(CORRUPT_IMAGE, path, f"undecodable image ({error})") from error
