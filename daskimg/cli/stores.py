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
    from ..store.splits import disagreeing
    from ..storeinfo import NOT_DAMAGE, format_info, info

    folder = _folder_of_stores(args.store, "info")
    if folder is not None:
        # a folder of stores, e.g. what `daskimg ingest` wrote
        stores, never, stopped = folder
        summaries, foreign = [], 0
        for path in stores:
            try:
                summaries.append(info(path))
            except NOT_DAMAGE as e:  # said, and the other stores still described
                print(f"{path}: skipped: {e}", file=sys.stderr)
                foreign = 2
        if args.json:
            print(json.dumps(summaries, indent=2, default=str))
        else:
            for summary in summaries:
                print(format_info(summary) + "\n")
        for path in never:
            print(f"{path}: {missing_error(Location.of(path))}", file=sys.stderr)
        numbered = disagreeing([(s["path"], s.get("attrs") or {}) for s in summaries])
        for said in numbered:
            print(said, file=sys.stderr)
        return max(
            _unfinished(summaries),
            _staged_beside(stores),
            1 if never or numbered else 0,
            _renamed(summaries),
            foreign,
            stopped,
        )
    summary = info(args.store, storage_options=args.storage_options)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_info(summary))
    swapped = _renamed([summary])
    return max(_unfinished([summary]), _staged_beside([args.store]), swapped)


def _folder_of_stores(path: str, command: str) -> tuple[list[str], list[str], int] | None:
    """For a local folder that is no store (``daskimg ingest``'s OUT): its stores, the
    stores whose only trace is the staging folder of a write killed before they were ever
    finished (or that an unfinished ingest was to write), and 1 when an ingest into it did
    not finish (said on stderr), else 0; None for a store or a URL. A path that does not
    exist and is named like no store is said as such (it was "must end in .zarr.zip")."""
    if is_url(path) or path.rstrip("/").endswith((".zarr", ".zarr.zip")):
        return None
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such store or folder of stores")
    if not os.path.isdir(path):
        return None  # a file named like no store: the store's own message
    from .ingest import unfinished_ingest

    names = os.listdir(path)
    stores = sorted(os.path.join(path, f) for f in names if f.endswith((".zarr.zip", ".zarr")))
    never = sorted(
        os.path.join(path, f.removesuffix(".partial"))
        for f in names
        if f.endswith((".zarr.zip.partial", ".zarr.partial"))
        and f.removesuffix(".partial") not in names
    )
    planned = unfinished_ingest(path)
    if planned is not None:  # a kill between two splits left the first alone, looking whole
        missing = [os.path.join(path, s) for s in planned if s not in names]
        never = sorted({*never, *missing})
        print(
            f"{path}: an ingest into it did not finish (it stopped, or is still running)"
            + (f": {', '.join(missing)} not written" if missing else "")
            + ". Run the same daskimg ingest again to finish it",
            file=sys.stderr,
        )
    if not stores and not never:
        raise FileNotFoundError(
            f"{path} is a folder without stores (*.zarr.zip or *.zarr); "
            f"name a store, e.g. daskimg {command} out/train.zarr.zip"
        )
    return stores, never, 0 if planned is None else 1


def _staged_beside(stores: list[str]) -> int:
    """1 (said on stderr) when a later write of a store stopped or is running: the store read
    is the one from before it (a killed ``ingest --overwrite`` left the old split)."""
    from ..store.location import Location

    found = [(s, Location.of(s).unfinished()) for s in stores if not is_url(s)]
    staged = [(s, partial) for s, partial in found if partial is not None]
    for s, partial in staged:
        print(
            f"{s}: an unfinished write of it is beside it ({partial}): it stopped "
            "or is still running, and what is described is the store from before it. If it "
            "stopped, re-run the same ingest/to_zarr (ArrayWriter: resume=True) to finish it",
            file=sys.stderr,
        )
    return 1 if staged else 0


def _renamed(summaries: list[dict[str, Any]]) -> int:
    """1 when a store is named as another split than it holds (said when it was opened)."""
    from ..store.splits import renamed

    return int(any(renamed(s["path"], s.get("attrs") or {}) is not None for s in summaries))


def _unfinished(summaries: list[dict[str, Any]]) -> int:
    """1 (said on stderr) when a store is not complete: ``daskimg info S && train`` went on
    with a store a kill left unfinished."""
    bad = [s for s in summaries if not (s.get("attrs") or {}).get("complete")]
    for s in bad:
        print(f"{s.get('path', 'a store')}: not complete (an unfinished write)", file=sys.stderr)
    return 1 if bad else 0


def verify_cmd(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..store.location import Location
    from ..store.open import missing_error
    from ..storeinfo import NOT_DAMAGE, count_chunks, unchecked, verify

    opts = args.storage_options
    folder = _folder_of_stores(args.store, "verify")
    stores, never, stopped = folder if folder is not None else ([args.store], [], 0)
    failed = 0
    for store in stores:  # each store of a folder (ingest's OUT), as info does
        try:
            total = count_chunks(store, storage_options=opts)
            with tqdm(total=total, unit="chunk", desc="verify", disable=None) as bar:
                problems = verify(store, progress=bar.update, storage_options=opts)
        except NOT_DAMAGE as e:  # not damage: said for what it is
            if folder is None:
                raise
            print(f"{store}: skipped: {e}", file=sys.stderr)  # the others still checked
            failed = 2
            continue
        for p in problems:
            # in a folder, each line names its store (once: a message may name it already)
            line = str(p)
            print(
                f"DAMAGED {line}" if folder is None or store in line else f"DAMAGED {store}: {line}"
            )
        if problems:
            print(f"{store}: {len(problems)} problem(s)", file=sys.stderr)
            failed = max(failed, 1)
            continue
        print(f"{store}: every chunk present and matching its checksum")
        note = unchecked(store, storage_options=opts)
        if note is not None:
            print(f"note: {note}")
    for path in never:
        print(f"{path}: {missing_error(Location.of(path))}", file=sys.stderr)
    return max(failed, 1 if never else 0, stopped)


def show_cmd(args: argparse.Namespace) -> int:
    from ..show import check_drawable, save_grid
    from ..store.open import open_zarr

    ds = open_zarr(args.store, storage_options=args.storage_options)
    check_drawable(ds.images, args.store)
    # where matplotlib really writes: a name without an ending gets ".png" (it said "wrote
    # grid" of grid.png); a folder gets grid.png inside it (it said "wrote out" of out.png)
    output = Path(args.output)
    if output.is_dir():
        output = output / "grid.png"
    elif not output.suffix:
        output = output.with_name(output.name + ".png")
    save_grid(ds, output, n=args.n, seed=args.seed)
    print(f"wrote {output}")
    return 0
