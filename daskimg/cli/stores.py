"""``daskimg info``, ``verify`` and ``show``: what is in a store, whether every chunk is
intact, what its samples look like."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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
        for path in stores:
            print(format_info(info(path)) + "\n")
        return 0
    summary = info(args.store, storage_options=args.storage_options)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_info(summary))
    return 0


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
    save_grid(ds, Path(args.output), n=args.n, seed=args.seed)
    print(f"wrote {args.output}")
    return 0
