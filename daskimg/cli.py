"""The ``daskimg`` command line: ingest, info, verify, bench, show."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import DaskImgError, DecodeError
from .remote import is_url

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
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
        "--codec",
        type=_codec,
        default=None,
        help="lz4 (default), zstd, none, jpeg (lossy, q90) or jpeg:Q (quality Q, 1-100)",
    )
    ing.add_argument(
        "--chunk", type=int, default=None, help="samples per chunk (default: about 8 MiB)"
    )
    ing.add_argument("--channels", type=int, default=3, choices=(1, 3, 4))
    ing.add_argument("--resize", default="stretch", choices=("stretch", "crop", "pad"))
    ing.add_argument("--on-error", default="raise", choices=("raise", "skip"))
    ing.add_argument(
        "--stray",
        default="raise",
        choices=("raise", "ignore"),
        help="an image beside the class folders: an error naming it (default), or ignored",
    )
    ing.add_argument(
        "--masks", default=None, metavar="DIR", help="a mask per image, by relative path and stem"
    )
    ing.add_argument(
        "--dtype",
        default=None,
        help="stored dtype (default: uint8 for images, the source's for volumes)",
    )
    ing.add_argument(
        "--scheduler", default="threads", help="threads, processes or HOST:PORT of a dask scheduler"
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
    conv.add_argument("--chunk", type=int, default=None, help="samples per chunk")
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
        "--target", type=float, default=None, metavar="IMG_PER_S", help="e.g. your GPU's images/s"
    )
    ben.add_argument("--epochs", type=int, default=3, help="measured epochs (after one warm-up)")
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
        type=int,
        default=2000,
        help="samples for --codecs: the first ones, cut to whole chunks (default 2000)",
    )

    show = sub.add_parser("show", help="draw a grid of samples with their labels")
    show.add_argument("store")
    show.add_argument("-o", "--output", required=True, help="PNG file to write")
    show.add_argument("--n", type=int, default=32)
    show.add_argument("--seed", type=int, default=0)
    _storage_options_arg(show)
    return p


def _codec(text: str) -> str:
    """``--codec``: checked before any image is decoded (argparse reports the error)."""
    from .store.codecs import parse_codec

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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(globals()[f"_cmd_{args.command}"](args))
    except (DaskImgError, OSError, ValueError, KeyError, ImportError) as e:
        print(f"daskimg {args.command}: error: {e}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _scheduler(spec: str) -> Iterator[None]:
    import dask

    if spec in ("threads", "processes", "sync"):
        with dask.config.set(scheduler=spec):
            yield
        return
    from distributed import Client

    address = spec if "://" in spec else f"tcp://{spec}"
    try:
        client = Client(address, timeout="5s")
    except (OSError, TimeoutError) as e:
        raise ValueError(
            f"cannot reach a dask scheduler at {address!r} ({e}); check the address and that "
            "`dask scheduler` is running there, or use --scheduler threads"
        ) from e
    try:
        if client.dashboard_link:
            print(f"dask dashboard: {client.dashboard_link}")
        yield
    finally:
        client.close()


def _cmd_ingest(args: argparse.Namespace) -> int:
    from .read.folder import from_folder
    from .store.write import to_zarr
    from .storeinfo import info

    t0 = time.perf_counter()
    opts = args.storage_options
    try:
        ds = from_folder(
            args.src,
            size=args.size,
            channels=args.channels,
            resize=args.resize,
            on_error=args.on_error,
            stray=args.stray,
            masks=args.masks,
            dtype=args.dtype,
            storage_options=opts if is_url(args.src) else None,
        )
    except ValueError as e:
        if "stray='ignore'" not in str(e):
            raise
        raise ValueError(f"{e} (on the command line: --stray ignore)") from None
    if ds.source_splits is not None:
        if args.valid is not None or args.test is not None:
            raise ValueError(f"{args.src} already holds split folders; drop --valid/--test")
        parts = ds.split()
    else:
        valid = 0.1 if args.valid is None else args.valid
        test = 0.1 if args.test is None else args.test
        if valid < 0 or test < 0 or valid + test >= 1:
            raise ValueError(
                f"--valid {valid} and --test {test} must be >= 0 and leave something to train on"
            )
        fractions = {"train": 1 - valid - test, "valid": valid, "test": test}
        parts = ds.split({k: v for k, v in fractions.items() if v > 0}, seed=args.seed)
    print(
        f"found {len(ds)} files in {len(ds.classes)} classes under {args.src}; splits: "
        + ", ".join(
            f"{k} {len(v)}" + (" (unlabelled)" if v.labels is None else "")
            for k, v in parts.items()
        )
    )
    ext = ".zarr.zip" if args.format == "zip" else ".zarr"
    rows = []
    with _scheduler(args.scheduler):
        for name, part in parts.items():
            if len(part) == 0:
                continue
            target = (
                args.out.rstrip("/") + "/" + name + ext
                if is_url(args.out)
                else os.path.join(args.out, name + ext)
            )
            t = time.perf_counter()
            so = opts if is_url(target) else None
            if not args.overwrite and _finished_same(part, target, so, args, name):
                print(f"kept {target}: complete, written from the same files and settings")
            else:
                print(f"writing {target} ({len(part)} samples)")
                try:
                    to_zarr(
                        part,
                        target,
                        chunks=args.chunk,
                        codec=args.codec,
                        seed=args.seed,
                        split=name,
                        overwrite=args.overwrite,
                        progress=True,
                        storage_options=so,
                    )
                except DecodeError as e:
                    if args.on_error == "skip":
                        raise
                    raise DecodeError(
                        e.path,
                        f"{e.reason}. Pass --on-error skip to leave files that cannot be decoded "
                        "out (each is listed in the store's 'skipped' attribute and here)",
                    ) from None
            summary = info(target, storage_options=so)
            img = summary["arrays"]["images"]
            rows.append(
                (
                    name,
                    summary["attrs"]["num_samples"],
                    len(part.skipped),
                    summary["file_bytes"],
                    img["ratio"],
                    time.perf_counter() - t,
                    part.skipped,
                )
            )
    print("\nsplit      samples  skipped        bytes   ratio    time")
    for name, n, nskip, nbytes, ratio, secs, _ in rows:
        print(f"{name:<9} {n:>8} {nskip:>8} {nbytes:>12} {ratio or 0:>6.2f}x {secs:>6.1f}s")
    for name, *_, skipped in rows:
        for path, why in skipped:
            print(f"skipped ({name}): {path}: {why}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _finished_same(part: Any, target: str, so: Any, args: argparse.Namespace, split: str) -> bool:
    """True if ``target`` holds a complete store written from the same files and settings (a
    re-run after a kill keeps it); a different store there is refused unless ``--overwrite``."""
    from .errors import StoreExistsError
    from .store.location import Location
    from .store.open import read_attrs
    from .store.write import fingerprint

    if not Location.of(target, so).exists():
        return False
    try:
        attrs = read_attrs(target, storage_options=so)
    except DaskImgError:
        return False  # unfinished or damaged: to_zarr refuses or replaces it, as it should
    want = fingerprint(
        part, codec=args.codec, chunks=args.chunk, shard_chunks=None, order="shuffled",
        seed=args.seed, split=split,
    )  # fmt: skip
    if (attrs.get("source") or {}).get("fingerprint") == want:
        return True
    raise StoreExistsError(
        f"{target} exists and was written from other files or settings; pass --overwrite to "
        "replace it (or write to another OUT)"
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from .store.convert import convert
    from .storeinfo import format_info, info

    t = time.perf_counter()
    with _scheduler(args.scheduler):
        path = convert(
            args.src,
            args.out,
            images=args.images,
            labels=args.labels,
            classes=args.classes,
            columns=[c for c in args.columns.split(",") if c],
            boxes=[b for b in args.boxes.split(",") if b],
            chunks=args.chunk,
            codec=args.codec,
            order=args.order,
            seed=args.seed,
            split=args.split,
            overwrite=args.overwrite,
            progress=True,
        )
    print(format_info(info(path)))
    print(f"done in {time.perf_counter() - t:.1f}s")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .storeinfo import format_info, info

    if (
        not is_url(args.store)
        and os.path.isdir(args.store)
        and not args.store.rstrip("/").endswith(".zarr")
    ):
        # a folder of stores, e.g. what `daskimg ingest` wrote
        stores = sorted(
            os.path.join(args.store, f)
            for f in os.listdir(args.store)
            if f.endswith((".zarr.zip", ".zarr"))
        )
        if not stores:
            raise FileNotFoundError(
                f"{args.store} is a folder without stores (*.zarr.zip or *.zarr); "
                "name a store, e.g. daskimg info out/train.zarr.zip"
            )
        for path in stores:
            print(format_info(info(path)) + "\n")
        return 0
    summary = info(args.store, storage_options=args.storage_options)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_info(summary))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .storeinfo import count_chunks, verify

    opts = args.storage_options
    total = count_chunks(args.store, storage_options=opts)
    with tqdm(total=total, unit="chunk", desc="verify", disable=None) as bar:
        problems = verify(args.store, progress=bar.update, storage_options=opts)
    for p in problems:
        print(f"DAMAGED {p}")
    if problems:
        print(f"{args.store}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.store}: every chunk present and matching its checksum")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import (
        CodecResult,
        bench_store,
        compare_codecs,
        measure_hdf5,
        recommend,
        sample_count,
        size_summary,
    )

    ok = True
    for cold in (False, True) if args.cold else (False,):
        res = bench_store(
            args.store,
            batch_size=args.batch_size,
            epochs=args.epochs,
            threads=args.threads,
            cold=cold,
        )
        cache = "cold: from disk" if cold else "warm: page cache"
        print(f"[{cache}]")
        print(
            f"  raw read + decompress limit ({args.threads} threads): {res['limit']:,.0f} samples/s"
        )
        print(
            f"  BatchIterator, shuffled: {res['rate']:,.0f} samples/s "
            f"({res['ratio']:.2f} of the limit, median of per-epoch ratios); "
            f"first batch after {res['first_batch_s'] * 1000:.0f} ms"
        )
        if args.target:
            keeps = res["rate"] >= args.target
            ok = ok and keeps
            print(
                f"  target {args.target:,.0f} img/s: {'keeps up' if keeps else 'DOES NOT keep up'} "
                f"({res['rate'] / args.target:.2f}x)"
            )
    if not (args.codecs or args.codec_list is not None or args.goal is not None):
        return 0 if ok else 1

    # --codecs: HDF5 LZF first (for comparison), then a row per codec as it is measured
    n, total = sample_count(args.store, args.samples)
    print(
        f"\ncodecs, each re-encoded from the first {n} of the store's {total} samples "
        f"({'all of them' if n == total else 'the whole store projected from them'}); "
        "shuffled samples/s from the page cache (warm) and from disk (cold), "
        "samples/s written:",
        flush=True,
    )
    print(
        f"  {'codec':9s} {'ratio':>7s} {'warm':>9s} {'cold':>9s} {'write':>8s} {'PSNR':>9s}"
        "  whole store"
    )
    hdf5 = None
    try:
        lzf = measure_hdf5(args.store, samples=args.samples)
    except ImportError as e:
        print(f"  {'hdf5-lzf':9s} not measured: {e}")
    else:
        hdf5 = lzf
        print(
            f"  {'hdf5-lzf':9s} {lzf.ratio:6.2f}x {'-':>9s} {'-':>9s} {lzf.write:8,.0f} "
            f"{'lossless':>9s}  {lzf.store_bytes / 2**30:.3f} GiB  "
            f"(h5py, {lzf.chunk_len} samples a chunk: for comparison)",
            flush=True,
        )

    def progress(codec: str, r: CodecResult | None) -> None:
        if r is None:  # starting: the row is finished when it is measured
            print(f"  {codec:9s}", end="", flush=True)
            return
        lossless = r.psnr == float("inf") and not r.codec.startswith("jpeg")
        psnr = "lossless" if lossless else f"{r.psnr:.1f} dB"
        print(
            f" {r.ratio:6.2f}x {r.warm:9,.0f} {r.cold:9,.0f} {r.write:8,.0f} {psnr:>9s}  "
            f"{r.store_bytes / 2**30:.3f} GiB",
            flush=True,
        )

    rows = compare_codecs(
        args.store,
        codecs=list(args.codec_list or ()) or None,
        samples=args.samples,
        batch_size=args.batch_size,
        epochs=max(1, min(args.epochs, 2)),
        threads=args.threads,
        progress=progress,
    )
    print(f"smallest lossless: {size_summary(rows, hdf5)}")
    goal = args.goal or "speed"
    rec = recommend(rows, target=args.target, goal=goal, hdf5=hdf5)
    print(f"recommended: {rec.text}")
    if goal == "speed":
        smallest = recommend(rows, target=args.target, goal="size", hdf5=hdf5)
        if smallest.codec != rec.codec:
            print(f'for the smallest store: --goal size ("{smallest.codec}")')
    if rec.meets_target is not None:
        ok = rec.meets_target
    return 0 if ok else 1


def _cmd_show(args: argparse.Namespace) -> int:
    from .show import save_grid
    from .store.open import open_zarr

    ds = open_zarr(args.store, storage_options=args.storage_options)
    save_grid(ds, Path(args.output), n=args.n, seed=args.seed)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
