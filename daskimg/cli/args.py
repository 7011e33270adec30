"""The command line's arguments: one parser, its subcommands and their checks."""

from __future__ import annotations

import argparse
import json

__all__ = ["parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="daskimg", description="Image libraries larger than RAM, as one Zarr file per split."
    )
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="decode a folder of images into OUT/<split>.zarr.zip")
    ing.add_argument(
        "src", help="folder of class subfolders, or one holding train/ valid/ (val/) test/"
    )
    ing.add_argument(
        "out", help="output folder; receives train.zarr.zip, valid.zarr.zip, test.zarr.zip"
    )
    ing.add_argument(
        "--size",
        nargs="+",
        type=int,
        required=True,
        metavar="N",
        help="H W (images) or D H W (volumes)",
    )
    ing.add_argument(
        "--valid", type=float, default=None, help="fraction for the valid split (default 0.1)"
    )
    ing.add_argument(
        "--test", type=float, default=None, help="fraction for the test split (default 0.1)"
    )
    ing.add_argument(
        "--no-stratify",
        action="store_true",
        help="divide the whole set by the fractions, not each class (with many small classes, "
        "each class giving every split one sample moves the shares)",
    )
    ing.add_argument(
        "--codec",
        type=_codec,
        default=None,
        help="lz4 (default), zstd, none, jpeg (lossy, q90) or jpeg:Q (quality Q, 1-100)",
    )
    ing.add_argument(
        "--chunk", type=_positive, default=None, help="samples per chunk (default: about 8 MiB)"
    )
    ing.add_argument(
        "--channels",
        type=int,
        default=None,
        choices=(1, 3, 4),
        help="image channels: 1 gray, 3 RGB (default), 4 RGBA (volumes have one)",
    )
    ing.add_argument(
        "--no-draft",
        action="store_true",
        help="decode JPEGs in full, as Pillow does, where libjpeg would scale one 2x or more "
        "the size by 1/2-1/8 first (faster; a mean of about 1-2 levels of 255 apart, a few "
        "pixels at edges 20-30)",
    )
    ing.add_argument("--resize", default="stretch", choices=("stretch", "crop", "pad"))
    ing.add_argument("--on-error", default="raise", choices=("raise", "skip"))
    ing.add_argument(
        "--stray",
        default="raise",
        choices=("raise", "ignore"),
        help="an image beside the class folders: an error naming it (default), or ignored",
    )
    ing.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder inside SRC that is not part of the set, left out with everything "
        "below it (repeat for several)",
    )
    ing.add_argument(
        "--masks", default=None, metavar="DIR", help="a mask per image, by relative path and stem"
    )
    ing.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the class folders' names in label order (default: sorted); given, folders that "
        "look like splits or wrappers are read as the classes named",
    )
    ing.add_argument(
        "--dtype",
        default=None,
        help="stored dtype (default: uint8 for images, the source's for volumes)",
    )
    ing.add_argument(
        "--scheduler",
        default="auto",
        help="auto (default: local image files decoded in worker processes, one per CPU), "
        "threads, processes, sync, or HOST:PORT of a dask scheduler (which must answer in 20 s; "
        "one without workers is waited for up to 10 minutes)",
    )
    ing.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="worker processes (auto, processes) or threads on this machine (default: one per CPU)",
    )
    ing.add_argument(
        "--seed", type=int, default=0, help="seed of the split and of the shuffled order"
    )
    ing.add_argument(
        "--format", choices=("zip", "dir"), default="zip", help="zip: one file per split (default)"
    )
    ing.add_argument("--overwrite", action="store_true", help="replace existing stores")
    _storage_options_arg(ing)

    conv = sub.add_parser("convert", help="turn an HDF5 dataset or .npy/.npz arrays into a store")
    conv.add_argument("src", help="*.h5 / *.hdf5, *.npy or *.npz")
    conv.add_argument("out", help="the store to write, e.g. out/train.zarr.zip")
    conv.add_argument(
        "--images", default="images", help="dataset / array name of the images (h5, npz)"
    )
    conv.add_argument(
        "--no-layout-check",
        dest="check_layout",
        action="store_false",
        help="store images that look channels-first (N, 1-4, H, W) as given (rows, not channels)",
    )
    conv.add_argument(
        "--labels", default=None, help="dataset / array name of the labels (for .npy: a .npy file)"
    )
    conv.add_argument(
        "--columns",
        default="",
        help="comma-separated datasets / arrays to carry as per-sample columns (e.g. bbox,ids)",
    )
    conv.add_argument(
        "--boxes",
        default="",
        help="comma-separated columns that are (N, 4) boxes x0,y0,x1,y1 in the images' pixels",
    )
    conv.add_argument("--classes", nargs="*", default=(), help="class names, in label order")
    conv.add_argument(
        "--codec",
        type=_codec,
        default=None,
        help="lz4 (default), zstd, none, jpeg (lossy, q90) or jpeg:Q (quality Q, 1-100)",
    )
    conv.add_argument("--chunk", type=_positive, default=None, help="samples per chunk")
    conv.add_argument("--order", default="shuffled", choices=("shuffled", "source"))
    conv.add_argument("--seed", type=int, default=0)
    conv.add_argument("--split", default=None, help="split name recorded in the store")
    conv.add_argument("--overwrite", action="store_true")
    conv.add_argument("--scheduler", default="threads", help="threads, processes or HOST:PORT")

    inf = sub.add_parser("info", help="what is in a store")
    inf.add_argument("store")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    _storage_options_arg(inf)

    ver = sub.add_parser("verify", help="re-read every chunk and check its checksum")
    ver.add_argument("store")
    _storage_options_arg(ver)

    ben = sub.add_parser("bench", help="loader throughput on this machine vs the raw read limit")
    ben.add_argument("store")
    ben.add_argument("--batch-size", type=int, default=64)
    ben.add_argument(
        "--target",
        type=_positive_rate,
        default=None,
        metavar="IMG_PER_S",
        help="e.g. your GPU's images/s",
    )
    ben.add_argument(
        "--epochs", type=_non_negative, default=3, help="measured epochs (after one warm-up)"
    )
    ben.add_argument("--threads", type=int, default=2)
    ben.add_argument(
        "--cold",
        action="store_true",
        help="also measure with the store dropped from the page cache before every epoch "
        "(as when it is bigger than RAM)",
    )
    ben.add_argument(
        "--codecs",
        action="store_true",
        help="re-encode a sample of the store with each codec (next to it, removed after), "
        "measure each warm and cold, compare their sizes with HDF5 LZF (needs h5py), and "
        "recommend one for --goal and --target "
        "(lz4, zstd, none, jpeg:90, jpeg:75; --codec-list to choose)",
    )
    ben.add_argument(
        "--goal",
        choices=("speed", "size"),
        default=None,
        help="what --codecs recommends for (implies --codecs). speed (default): the fastest "
        "lossless codec; with --target the smallest lossless one that keeps up, else JPEG or "
        "the fastest. size: the smallest lossless codec (with --target: that keeps up), and "
        "what it costs in speed",
    )
    ben.add_argument(
        "--codec-list",
        type=_codec_list,
        default=None,
        metavar="LIST",
        help="--codecs with these codecs: comma-separated, e.g. lz4,jpeg:85",
    )
    ben.add_argument(
        "--samples",
        type=_positive,
        default=2000,
        help="samples for --codecs: the first ones, cut to whole chunks (default 2000)",
    )

    show = sub.add_parser("show", help="draw a grid of samples with their labels")
    show.add_argument("store")
    show.add_argument("-o", "--output", required=True, help="PNG file to write")
    show.add_argument("--n", type=int, default=32)
    show.add_argument("--seed", type=_non_negative, default=0)
    _storage_options_arg(show)
    return p


def _positive_rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"a positive number of images a second, got {text!r}")
    return v


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"a positive whole number, got {text!r}")
    return n


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"a whole number of 0 or more, got {text!r}")
    return n


def _codec(text: str) -> str:
    """``--codec``: checked before any image is decoded (argparse reports the error)."""
    from ..store.codecs import parse_codec

    try:
        parse_codec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _codec_list(text: str) -> tuple[str, ...]:
    """``--codec-list``: comma-separated codecs, each checked before anything is measured."""
    return tuple(_codec(c.strip()) for c in text.split(",") if c.strip())


def _storage_options_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-options",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="fsspec options for s3://... URLs, e.g. "
        '\'{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\' '
        "(credentials are best left to the AWS_* environment variables)",
    )
