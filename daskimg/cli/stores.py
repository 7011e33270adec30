"""``daskimg info``, ``verify`` and ``show``: what is in a store, whether every chunk is
intact, what its samples look like."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..remote import is_url

__all__ = ["info_cmd", "show_cmd", "verify_cmd"]


def info_cmd(args: argparse.Namespace) -> int:
    from ..store.location import Location
    from ..store.open import missing_error
    from ..storeinfo import format_info, info

    if (
        not is_url(args.store)
        and os.path.isdir(args.store)
        and not args.store.rstrip("/").endswith(".zarr")
    ):
        # a folder of stores, e.g. what `daskimg ingest` wrote
        names = os.listdir(args.store)
        stores = sorted(
            os.path.join(args.store, f) for f in names if f.endswith((".zarr.zip", ".zarr"))
        )
        # a write killed before its store was ever finished leaves only its staging folder
        never = sorted(
            os.path.join(args.store, f.removesuffix(".partial"))
            for f in names
            if f.endswith((".zarr.zip.partial", ".zarr.partial"))
            and f.removesuffix(".partial") not in names
        )
        if not stores and not never:
            raise FileNotFoundError(
                f"{args.store} is a folder without stores (*.zarr.zip or *.zarr); "
                "name a store, e.g. daskimg info out/train.zarr.zip"
            )
        summaries = [info(path) for path in stores]
        if args.json:
            print(json.dumps(summaries, indent=2, default=str))
        else:
            for summary in summaries:
                print(format_info(summary) + "\n")
        for path in never:
            print(f"{path}: {missing_error(Location.of(path))}", file=sys.stderr)
        return max(_unfinished(summaries), _staged_beside(stores), 1 if never else 0)
    summary = info(args.store, storage_options=args.storage_options)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_info(summary))
    return max(_unfinished([summary]), _staged_beside([args.store]))


def _staged_beside(stores: list[str]) -> int:
    """1 (said on stderr) when a later write of a store stopped or is running: the store read
    is the one from before it (a killed ``ingest --overwrite`` left the old split)."""
    staged = [s for s in stores if not is_url(s) and os.path.lexists(s.rstrip("/") + ".partial")]
    for s in staged:
        print(
            f"{s}: an unfinished write of it is beside it ({s.rstrip('/')}.partial): it stopped "
            "or is still running, and what is described is the store from before it. If it "
            "stopped, re-run the same ingest/to_zarr (ArrayWriter: resume=True) to finish it",
            file=sys.stderr,
        )
    return 1 if staged else 0


def _unfinished(summaries: list[dict[str, Any]]) -> int:
    """1 (said on stderr) when a store is not complete: ``daskimg info S && train`` went on
    with a store a kill left unfinished."""
    bad = [s for s in summaries if not (s.get("attrs") or {}).get("complete")]
    for s in bad:
        print(f"{s.get('path', 'a store')}: not complete (an unfinished write)", file=sys.stderr)
    return 1 if bad else 0


def verify_cmd(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..storeinfo import count_chunks, unchecked, verify

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
    note = unchecked(args.store, storage_options=opts)
    if note is not None:
        print(f"note: {note}")
    return 0


def show_cmd(args: argparse.Namespace) -> int:
    from ..show import save_grid
    from ..store.open import open_zarr

    ds = open_zarr(args.store, storage_options=args.storage_options)
    images = ds.images
    channels = images.shape[-1] if images is not None else 0
    if images is None or (images.ndim == 4 and channels not in (1, 3, 4)) or images.dtype == bool:
        what = "no images" if images is None else f"images of {channels} channels ({images.dtype})"
        raise ValueError(
            f"{args.store} holds {what}: show draws images of 1, 3 or 4 channels (gray, RGB, "
            "RGBA) and volumes of one; draw others yourself from open_zarr(...).images"
        )
    save_grid(ds, Path(args.output), n=args.n, seed=args.seed)
    print(f"wrote {args.output}")
    return 0
