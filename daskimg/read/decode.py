"""Decode one image or volume file into a fixed-shape numpy array.

This is the hot path of every reader: each call opens one file once, decodes it
once and writes the result, resized to a fixed shape, straight into the caller's
array (:func:`decode_into`) or a new one (:func:`decode_file`).

Images
------
* The format is sniffed from the file's content, never from its name: a JPEG
  called ``cat.png`` or ``CAT.JPG`` decodes as a JPEG. JPEG (baseline,
  progressive, grayscale, CMYK), PNG (RGB, RGBA, LA, palette with and without
  transparency, 16-bit), TIFF, BMP, WebP and anything else Pillow reads.
* The EXIF orientation is applied, exactly as :func:`PIL.ImageOps.exif_transpose`.
* Channels: ``channels=3`` gives RGB, ``4`` RGBA (opaque 255 added where the
  file has no alpha), ``1`` gray (``L``). Pillow's ``convert`` does the work, so
  CMYK is converted by Pillow (its plain formula). Colour profiles (ICC) are not
  applied, as Pillow does not apply them: a Display-P3 or Adobe RGB photo keeps its
  stored values, read as if sRGB; convert such files to sRGB first if that matters.
  Alpha is *dropped*, not composited, when
  ``channels`` is 1 or 3: a transparent pixel keeps the color it stores (the same
  as ``Image.convert("RGB")``); ask for ``channels=4`` to keep it.
* Bit depth: 8-bit sources give ``uint8`` as is, ``uint16`` times 257 (255 ->
  65535) and ``float32`` divided by 255. 16-bit sources (``I;16`` and friends,
  16-bit PGM/PPM, and ``I`` images whose values fit 0..65535; a 32-bit TIFF is read as
  ``uint16`` only: 32-bit pixels say nothing of their range) are resized in 16 bits, then give
  ``uint8`` by ``value >> 8`` (65535 -> 255, no clipping), ``uint16`` as is and
  ``float32`` divided by 65535. A 16-bit gray file read with 3 or 4 channels is
  repeated into each color channel. 32-bit float (``F``) images are refused:
  they have no fixed range to scale from. 16-bit *color* files (RGB or RGBA
  PNG and TIFF with 16 bits per sample, and 16-bit gray PNGs with alpha, which
  Pillow opens as RGBA) are another matter: Pillow keeps only
  the top 8 bits of each sample, so they decode as 8-bit sources (``uint16``
  output is ``value >> 8`` times 257); keep their full depth as ``.npy``.
* Resizing uses Pillow's ``BILINEAR`` filter, which is anti-aliased when it
  shrinks (its support widens with the scale, like torchvision's
  ``antialias=True``); it costs half of ``LANCZOS`` on the hot path and does not
  overshoot. ``resize="stretch"`` maps the whole image onto ``size``;
  ``"crop"`` scales the shorter side to fit and cuts the center, exactly as
  :func:`PIL.ImageOps.fit`; ``"pad"`` fits the whole image inside and centers it
  on zeros, as :func:`PIL.ImageOps.pad` does (except that a side that would scale to
  less than one pixel keeps one, where Pillow gives an all-black image). A source that
  already has the target size is not resampled.
* DCT draft: with ``draft=True``, a JPEG at least 2x larger than needed in both
  directions is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (never below the
  size needed, which for ``"crop"`` is the size covering the crop), then resized
  the rest of the way. Resizing to 224x224 in one process, this lifts the rate
  from about 160 to 280 photos/s at 1024x768 and from 50 to 170 at 2000x1500;
  a 500x375 photo is not 2x the target, so it is decoded in full either way
  (about 510/s). The DCT scaling is a slightly softer low-pass than the bilinear
  filter, so results differ a little from a full decode. Measured against
  Pillow's full decode and the same resize (1,120 RGB and 1,120 gray decodes of
  :func:`daskimg.testing.make_photo_folder` photos, 300 to 600 px, to 48 to 224
  px in all three resize modes), the mean absolute difference per image
  averages 0.75 levels of 255 at 1/2 scale, 1.1 at 1/4 and 1.8 at 1/8 (worst
  photo 2.2, 3.1 and 4.4); gray output, for which libjpeg returns its luma plane
  directly, is within 0.1 of those. Tiny, busy images differ more (about 6
  levels for a 40x32 synthetic picture halved), and so do photos 8 (or 4) times
  a small target: libjpeg's scale is then the whole resize, 8x8 block means where
  the bilinear filter is a wider triangle (skimage's astronaut at 256x256 to 32x32:
  5.0 levels; 300x200 to 37x23: 4.6). A picture that would keep fewer than 8 pixels
  on a side at a scale is not drafted to it (a 5x5 gradient drafted to 1x1 was 38
  levels off; 12x12 to 3x3, 10). The tests allow a mean of 2.5
  over a set of photos and 5 for any one photo. ``draft=False`` (``daskimg ingest
  --no-draft``) gives Pillow's
  full decode, identical to ``Image.open`` -> ``exif_transpose`` -> ``convert``
  -> ``resize``.
* Pillow's decompression-bomb limit is kept: images over
  ``2 * PIL.Image.MAX_IMAGE_PIXELS`` raise :class:`~daskimg.errors.DecodeError`,
  and the warning Pillow gives between the limit and twice the limit is
  silenced while the file is opened.

The fast path (common JPEGs)
----------------------------
A baseline or progressive JPEG, 8 bits, YCbCr or gray, in any EXIF orientation (the
decoded pixels flipped or turned as ``exif_transpose`` does, before the resize; a
portrait photo from a phone is orientation 6) -- most files of a photo library -- is
decoded by simplejpeg and resized by
:func:`daskimg.read.resample.resize_into` instead of Pillow, about twice as fast
(1.0 instead of 2.0-2.3 ms of CPU per 500x375 photo resized to 224x224, one core here)
and without holding the GIL, so the threaded scheduler keeps every core busy. The
pixels, sizes and geometry are **the same, bit for bit**, as the Pillow path above
(PSNR infinite, not merely high): simplejpeg is libjpeg-turbo with the settings
Pillow's decoder uses (accurate integer IDCT, smooth chroma upsampling, the same
1/2, 1/4, 1/8 DCT scaling as ``draft``), and ``resize_into`` is Pillow's own
BILINEAR arithmetic (coefficients, 22-bit fixed point, pass order, rounding)
compiled by numba; it checks itself against the installed Pillow before it is used.
Every other file (CMYK, 12-bit, XMP-rotated, PNG, TIFF, WebP, ...) and any file
simplejpeg refuses or warns about goes to Pillow, as before (a JPEG libjpeg warns about
is then named in a warning: Pillow decodes damaged scan data without a word; a JPEG only
Pillow decodes, CMYK or Adobe RGB, is checked by libjpeg at 1/8 scale for the same
damage, about a third of a decode's CPU). See
:mod:`daskimg.read.fastjpeg`.

Why this resize: measured on 100 benchmark photos (500x375 -> 224x224 RGB), CPU per
image on one core, PSNR against Pillow's BILINEAR (min / median):

=============================================  =============  ==========
method                                         PSNR, dB       CPU, ms
=============================================  =============  ==========
Pillow BILINEAR (the reference)                identical      1.22
Pillow ``reduce`` + BILINEAR (reducing_gap 1)  39.6 / 44.7    1.07
Pillow BOX                                     31.9 / 37.0    0.82
OpenCV ``INTER_AREA``                          38.8 / 43.5    1.02
OpenCV ``INTER_LINEAR`` (no anti-aliasing)     31.6 / 36.5    0.16
OpenCV triangle prefilter + ``INTER_LINEAR``   47.1 / 50.7    0.48
pyvips ``reduce``, linear kernel               54.2 / 55.1    0.96
scikit-image ``resize(anti_aliasing=True)``    36.6 / 42.0    10.1
libjpeg-turbo 5/8 DCT scaling + BILINEAR       29.1 / 32.9    0.70
daskimg ``resize_into`` (numba)                identical      0.42
=============================================  =============  ==========

The compiled kernels cost numba (a dependency) and a one-time compile of a few seconds
per machine (cached on disk; a new process loads them in about half a second). Without
numba, ``resize_into`` calls Pillow: slower, the same pixels.

Volumes
-------
``.npy`` files (memory-mapped) and TIFF stacks (tifffile), told apart by their
first bytes, resized to exactly ``size`` by anti-aliased linear interpolation. Values
are never rescaled, and a volume keeps its dtype unless a narrower one is asked for
(then every value must fit). See :mod:`daskimg.read.volumes`.

Errors
------
Missing, empty, non-image, truncated or corrupt files, unsupported modes and
decompression bombs raise :class:`~daskimg.errors.DecodeError` naming the file;
a bad file never yields a zero-filled sample. A JPEG whose data libjpeg reports damaged
but decodes past (as Pillow and image viewers do: bytes overwritten mid-file, stray bytes
before its end) is decoded so and named in a warning.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Final

import numpy as np
from PIL import Image

from . import fastjpeg
from .fileio import open_image, read_bytes, strict_pillow
from .geometry import placement
from .pillowpath import CHANNEL_MODES, decode_pil, draft_scale, transposed_origin
from .resample import resize_into
from .volumes import VOLUME_DTYPES, volume_into

__all__ = ["DecodeSpec", "decode_file", "decode_image", "decode_into", "decode_volume"]

logger = logging.getLogger("daskimg")

#: the dtypes of images; volumes take any of VOLUME_DTYPES
IMAGE_DTYPES: Final = ("uint8", "uint16", "float32")
_RESIZE_MODES: Final = ("stretch", "crop", "pad")
_F32_255: Final = np.float32(255)
_F32_65535: Final = np.float32(65535)


@dataclass(frozen=True)
class DecodeSpec:
    """What every decoded sample looks like: its size, channels, dtype and resize rule.

    Parameters
    ----------
    size : tuple of int
        ``(height, width)`` for 2-D images or ``(depth, height, width)`` for
        volumes; positive integers.
    channels : {3, 1, 4}
        Image channels: 1 (gray), 3 (RGB) or 4 (RGBA). Volumes always have one
        channel, so this is set to 1 when ``size`` has three entries.
    dtype : str
        Sample dtype. Images: ``"uint8"``, ``"uint16"`` (spans 0..65535) or
        ``"float32"`` (scaled into [0, 1]). Volumes: any of
        :data:`~daskimg.read.volumes.VOLUME_DTYPES` (``"int16"``, ``"float64"``,
        ...); they keep their values (see :mod:`daskimg.read.volumes`). Any spelling
        numpy understands is stored as the dtype's name.
    resize : {"stretch", "crop", "pad"}
        How images of another shape are fitted: ``"stretch"`` to ``size``,
        ``"crop"`` to cover ``size`` and cut the center, ``"pad"`` to fit inside
        ``size`` and center on zeros. Volumes are always stretched (``"crop"`` or
        ``"pad"`` with a 3-D size is an error).
    draft : bool
        Let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale (see the module
        notes for the small difference this makes).

    Examples
    --------
    >>> spec = DecodeSpec((224, 224), channels=3, dtype="float32")
    >>> spec
    DecodeSpec(size=(224, 224), channels=3, dtype='float32', resize='stretch', draft=True)
    >>> spec.sample_shape
    (224, 224, 3)
    >>> DecodeSpec((16, 64, 64)).sample_shape
    (16, 64, 64, 1)
    """

    size: tuple[int, ...]
    _: KW_ONLY
    channels: int = 3
    dtype: str = "uint8"
    resize: str = "stretch"
    draft: bool = True
    #: the volumes' dtype was taken from the set's first file, not asked for: a file of
    #: wider floats is refused rather than rounded to it (as an asked float dtype rounds)
    dtype_taken: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        size = _check_size(self.size)
        channels = self.channels
        if (
            not isinstance(channels, (int, np.integer))
            or isinstance(channels, bool)
            or channels not in (1, 3, 4)
        ):
            raise ValueError(f"channels must be 1 (gray), 3 (RGB) or 4 (RGBA); got {channels!r}")
        if len(size) == 3:
            channels = 1  # volumes have one channel whatever the image default says
        try:
            dtype = np.dtype(self.dtype).name
        except TypeError:
            dtype = None
        if len(size) == 3:
            if dtype not in VOLUME_DTYPES:
                raise ValueError(
                    f"dtype of volumes must be one of {', '.join(VOLUME_DTYPES)}; got {self.dtype!r}"
                )
        elif dtype not in IMAGE_DTYPES:
            hint = (
                "; integer dtypes other than these are for volumes (give a 3-D size)"
                if dtype in VOLUME_DTYPES
                else ""
            )
            raise ValueError(
                f"dtype of images must be 'uint8', 'uint16' or 'float32'; got {self.dtype!r}{hint}"
            )
        if self.resize not in _RESIZE_MODES:
            raise ValueError(f"resize must be 'stretch', 'crop' or 'pad'; got {self.resize!r}")
        if len(size) == 3 and self.resize != "stretch":
            raise ValueError(
                f"resize={self.resize!r} is for images: volumes (a 3-D size) are always "
                "stretched to the size; leave resize at its default 'stretch', or crop or "
                "pad the volumes before reading them"
            )
        if not isinstance(self.draft, bool):
            raise ValueError(f"draft must be True or False; got {self.draft!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "channels", int(channels))
        object.__setattr__(self, "dtype", dtype)

    @property
    def is_volume(self) -> bool:
        """Whether samples are volumes (``size`` has three entries).

        Examples
        --------
        >>> DecodeSpec((8, 32, 32)).is_volume
        True
        """
        return len(self.size) == 3

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one decoded sample: ``(H, W, C)`` or ``(D, H, W, 1)``.

        Examples
        --------
        >>> DecodeSpec((32, 40), channels=1).sample_shape
        (32, 40, 1)
        """
        return (*self.size, self.channels)


def _check_size(size: object) -> tuple[int, ...]:
    """Validate ``size`` and return it as a tuple of Python ints."""
    fix = "size must be (height, width) for images or (depth, height, width) for volumes"
    if not isinstance(size, (tuple, list)) or len(size) not in (2, 3):
        raise ValueError(f"{fix}; got {size!r}")
    out = []
    for n in size:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{fix}, with positive integers; got {size!r}")
        out.append(int(n))
    return tuple(out)


def decode_file(path: str | os.PathLike[str], spec: DecodeSpec) -> np.ndarray:
    """Decode one image or volume file into an array of ``spec.sample_shape``.

    Volumes (``spec.is_volume``) go to :func:`decode_volume`, everything else to
    :func:`decode_image`.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its content, not its name, decides the format.
    spec : DecodeSpec
        Shape, channels, dtype and resize rule of the result.

    Returns
    -------
    numpy.ndarray
        A new array of shape ``spec.sample_shape`` and dtype ``spec.dtype``.

    Raises
    ------
    daskimg.errors.DecodeError
        If the file is missing, empty, not an image (or volume), truncated,
        corrupt, of an unsupported mode or dtype, or a decompression bomb.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from daskimg.testing import make_image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "cat.png"
    >>> make_image((32, 40), seed=1).save(path)
    >>> decode_file(path, DecodeSpec((16, 16), channels=1)).shape
    (16, 16, 1)
    """
    out = np.empty(spec.sample_shape, dtype=spec.dtype)
    decode_into(path, spec, out)
    return out


def decode_image(path: str | os.PathLike[str], spec: DecodeSpec) -> np.ndarray:
    """Decode one 2-D image into an ``(H, W, C)`` array.

    Parameters
    ----------
    path : str or os.PathLike
        Any image Pillow reads; the format is sniffed from the content.
    spec : DecodeSpec
        A 2-D spec.

    Returns
    -------
    numpy.ndarray
        Shape ``spec.sample_shape``, dtype ``spec.dtype``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from daskimg.testing import make_image
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "dog.jpg"
    >>> make_image((300, 400), seed=2).save(path, quality=90)
    >>> x = decode_image(path, DecodeSpec((224, 224), resize="crop", dtype="float32"))
    >>> x.shape, x.dtype.name, 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    ((224, 224, 3), 'float32', True)
    """
    if spec.is_volume:
        raise ValueError(f"decode_image needs a 2-D spec; got size={spec.size}. Use decode_volume.")
    out = np.empty(spec.sample_shape, dtype=spec.dtype)
    _image_into(os.fspath(path), spec, out)
    return out


def decode_volume(path: str | os.PathLike[str], spec: DecodeSpec) -> np.ndarray:
    """Decode one volume (``.npy`` or TIFF stack) into a ``(D, H, W, 1)`` array.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file holding a 3-D array (or 4-D with a trailing channel of
        1), or a multi-page TIFF; told apart by their first bytes.
    spec : DecodeSpec
        A 3-D spec; the volume is resized to exactly ``spec.size``.

    Returns
    -------
    numpy.ndarray
        Shape ``spec.sample_shape``, dtype ``spec.dtype``; values are cast, not
        rescaled.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.npy"
    >>> np.save(path, np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8))
    >>> decode_volume(path, DecodeSpec((2, 3, 5), dtype="float32")).shape
    (2, 3, 5, 1)
    """
    if not spec.is_volume:
        raise ValueError(f"decode_volume needs a 3-D spec; got size={spec.size}. Use decode_image.")
    out = np.empty(spec.sample_shape, dtype=spec.dtype)
    volume_into(os.fspath(path), out, taken=spec.dtype_taken)
    return out


def decode_into(
    path: str | os.PathLike[str],
    spec: DecodeSpec,
    out: np.ndarray,
    *,
    data: bytes | None = None,
) -> tuple[int, ...]:
    """Decode one file straight into ``out``, e.g. one slot of a preallocated block.

    Parameters
    ----------
    path : str or os.PathLike
        An image or volume file, as for :func:`decode_file`. With ``data``, it only
        names the file in errors (e.g. an ``s3://`` URL).
    spec : DecodeSpec
        Shape, channels, dtype and resize rule.
    out : numpy.ndarray
        A writable array (or view) of shape ``spec.sample_shape`` and dtype
        ``spec.dtype``. On error its content is undefined.
    data : bytes, optional
        The file's content, already read (from object storage, say); the file is
        then not opened.

    Returns
    -------
    tuple of int
        The source's size: ``(H, W)`` of an image after EXIF orientation, ``(D, H, W)``
        of a volume.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from daskimg.testing import make_image_folder
    >>> paths = make_image_folder(pathlib.Path(tempfile.mkdtemp()), n=4)
    >>> spec = DecodeSpec((32, 32))
    >>> block = np.empty((len(paths), *spec.sample_shape), dtype=spec.dtype)
    >>> for i, p in enumerate(paths):
    ...     source_size = decode_into(p, spec, block[i])
    >>> source_size
    (32, 40)
    >>> bool((block[0] == decode_file(paths[0], spec)).all())
    True
    """
    if out.shape != spec.sample_shape or out.dtype != spec.dtype:
        raise ValueError(
            f"out must have shape {spec.sample_shape} and dtype {spec.dtype}; "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if spec.is_volume:
        return volume_into(os.fspath(path), out, data, taken=spec.dtype_taken)
    return _image_into(os.fspath(path), spec, out, data)


# --- images -----------------------------------------------------------------


def _image_into(
    path: str, spec: DecodeSpec, out: np.ndarray, data: bytes | None = None
) -> tuple[int, int]:
    """Decode the image at ``path`` (or its content ``data``) into ``out``; return its (H, W).

    ``out``'s shape and dtype are checked by the caller; (H, W) is the source's size after
    EXIF orientation. Common JPEGs take the fast path (:func:`_fast_into`), everything
    else (and anything the fast path is unsure of) Pillow; the pixels are the same.
    """
    if data is None:
        data = read_bytes(path)
    fastjpeg.damage()  # (none said yet of this file)
    size = _fast_into(data, spec, out)
    if size is not None:
        return size
    with strict_pillow():  # a truncated file fails, whatever the process's Pillow setting
        source = open_image(path, data)
        try:
            im, place, (w, h) = decode_pil(source, spec, path)
            _array_into(np.asarray(im), spec, out, place)
        finally:
            source.close()
    said = fastjpeg.damage()
    if said is None and not fastjpeg.tried() and data.startswith(b"\xff\xd8\xff"):
        said = fastjpeg.check(data)  # a JPEG only Pillow took (CMYK, arithmetic, ...)
    if said is not None:
        # libjpeg decodes on past damage in the data, as Pillow and viewers show it: the
        # picture may be partly garbage (bytes overwritten mid-file), or whole (stray
        # bytes before the end marker, which some cameras write). Said, not refused
        logger.warning(
            "%r: libjpeg reports damage in the file (%s); it was decoded as Pillow and image "
            "viewers decode it, which may show garbage in part of the picture. Look at it, "
            "and remove or replace the file if it is damaged",
            path,
            said,
        )
    return h, w


def _fast_into(data: bytes, spec: DecodeSpec, out: np.ndarray) -> tuple[int, int] | None:
    """The fast path: a JPEG :func:`~daskimg.read.fastjpeg.read_header` takes, decoded by
    simplejpeg and resized by :func:`~daskimg.read.resample.resize_into`, exactly as
    :func:`~daskimg.read.pillowpath.decode_pil` would; returns its (H, W), or None to leave the file to Pillow."""
    head = fastjpeg.read_header(data)
    if head is None:
        return None
    w, h = head.width, head.height  # as stored in the file
    if w * h > (Image.MAX_IMAGE_PIXELS or math.inf):
        return None  # Pillow warns or refuses: let it
    target = CHANNEL_MODES[spec.channels]
    turn = head.orientation
    if turn >= 5:  # the picture upright is the file's transpose
        w, h = h, w
    scale = draft_scale((w, h), spec) if spec.draft else 1
    pixels = fastjpeg.decode(data, head, mode="L" if target == "L" else "RGB", scale=scale)
    if pixels is None:
        return None
    ox = oy = 0.0
    if turn != 1:  # ImageOps.exif_transpose, then (drafted) the slack moved as Pillow moves it
        drafted = (pixels.shape[1], pixels.shape[0])
        extent = (head.width / scale, head.height / scale)
        if scale > 1:
            ox, oy = transposed_origin(drafted, extent, turn)
        pixels = np.ascontiguousarray(_UPRIGHT[turn](pixels))
    where = placement((h, w), (spec.size[0], spec.size[1]), spec.resize)
    box = where.box
    pw, ph = where.size
    if scale == 1 and (pw, ph) == (w, h) and box == (0, 0, w, h):
        arr = pixels
    else:
        if scale > 1:
            box = (
                ox + box[0] / scale,
                oy + box[1] / scale,
                ox + box[2] / scale,
                oy + box[3] / scale,
            )
        if (
            spec.dtype == "uint8" and pixels.shape[2] == spec.channels and (ph, pw) == out.shape[:2]
        ):  # the common case: straight into the sample
            resize_into(pixels, box, out)
            return h, w
        arr = np.empty((ph, pw, pixels.shape[2]), np.uint8)
        resize_into(pixels, box, arr)
    _array_into(arr, spec, out, where.offset)
    return h, w


#: EXIF orientation -> the numpy view of an (H, W, C) array that Pillow's transpose gives
_UPRIGHT: Final[dict[int, Callable[[np.ndarray], np.ndarray]]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: a[::-1].transpose(1, 0, 2),  # ROTATE_270 (90 degrees clockwise)
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: a[:, ::-1].transpose(1, 0, 2),  # ROTATE_90 (90 degrees counter-clockwise)
}


def _array_into(arr: np.ndarray, spec: DecodeSpec, out: np.ndarray, place: tuple[int, int]) -> None:
    """Write the final pixels into ``out`` at ``place``, converting the bit depth.

    ``arr`` is ``(h, w)`` or ``(h, w, c)``: 8-bit with ``spec.channels`` channels, or one
    (gray, copied into the color channels), or three for an RGBA sample (opaque alpha
    added); or 16-bit gray.
    """
    h, w = arr.shape[:2]
    if (h, w) == out.shape[:2]:
        region = out
    else:  # "pad": zeros around the picture
        out[...] = 0
        x, y = place
        region = out[y : y + h, x : x + w]
    if arr.dtype == np.uint8:
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.shape[2] < spec.channels == 4:  # a JPEG's RGB or gray: alpha is opaque
            region[:, :, 3] = {"uint8": 255, "uint16": 65535, "float32": 1.0}[spec.dtype]
            region = region[:, :, :3]
        if spec.dtype == "uint8":
            np.copyto(region, arr)
        elif spec.dtype == "uint16":
            np.multiply(arr, np.uint16(257), out=region)
        else:
            np.divide(arr, _F32_255, out=region)
        return
    # 16-bit gray: I;16 as uint16, or I (int32) whose values were checked to fit 0..65535
    if arr.dtype != np.uint16:
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    gray = region[:, :, 0]
    if spec.dtype == "uint8":
        np.right_shift(arr, 8, out=gray, casting="unsafe")
        opaque: float = 255
    elif spec.dtype == "uint16":
        np.copyto(gray, arr)
        opaque = 65535
    else:
        np.divide(arr, _F32_65535, out=gray)
        opaque = 1.0
    if spec.channels > 1:
        region[:, :, 1:3] = gray[:, :, None]
    if spec.channels == 4:
        region[:, :, 3] = opaque
