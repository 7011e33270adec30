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
    from ..storeinfo import format_info, info

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
        summaries = [info(path) for path in stores]
        if args.json:
            print(json.dumps(summaries, indent=2, default=str))
        else:
            for summary in summaries:
                print(format_info(summary) + "\n")
        return _unfinished(summaries)
    summary = info(args.store, storage_options=args.storage_options)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_info(summary))
    return _unfinished([summary])


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
