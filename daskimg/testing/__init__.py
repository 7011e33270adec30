"""Tiny, seeded test data: images, image folders, volumes and a small photo library.

Everything here is deterministic given ``seed`` and needs no network: the photo
library is cut from the pictures bundled inside the scikit-image wheel. The test
suite, the docs and the demo all build their data with these helpers.

Sizes are given as ``(height, width)`` like everywhere else in daskimg (Pillow
itself uses ``(width, height)``).

``images`` (synthetic pictures and class folders of them), ``objects`` (pictures with
known boxes and masks, EXIF-oriented files), ``volumes`` (3-D arrays and folders of
them), ``photos`` (a photo library from the pictures bundled in scikit-image).
"""

from .images import IMAGE_MODES, make_image, make_image_folder
from .objects import make_object_image, make_object_mask, save_oriented
from .photos import PHOTOS, make_photo_folder
from .volumes import make_volume, make_volume_folder

__all__ = [
    "IMAGE_MODES",
    "PHOTOS",
    "make_image",
    "make_image_folder",
    "make_object_image",
    "make_object_mask",
    "make_photo_folder",
    "make_volume",
    "make_volume_folder",
    "save_oriented",
]
