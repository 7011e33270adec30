"""Store: look inside a store — :func:`info` (what is in it) and :func:`verify` (is it intact)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import zarr

from .errors import ChecksumError, DaskImgError
from .remote import check_options, is_url, local_path
from .store.open import open_group, read_attrs
from .store.reader import StoreReader

__all__ = ["Problem", "info", "verify"]


@dataclass(frozen=True)
class Problem:
    """A damaged or missing chunk found by :func:`verify`."""

    array: str
    chunk: int
    message: str

    def __str__(self) -> str:
        return f"array {self.array!r}, chunk {self.chunk}: {self.message}"


def _url(path: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> str | None:
    """``path`` if it is a URL read through fsspec (not ``file://``), else None."""
    if is_url(path) and local_path(str(path)) is None:
        return str(path).rstrip("/")
    check_options(path, storage_options)
    return None


def _local(path: str | os.PathLike[str]) -> str:
    return (local_path(path) or path) if isinstance(path, str) else os.fspath(path)


def verify(
    path: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """Re-read every chunk of every array, checking checksums; return the problems found.

    An empty list means every chunk is present and matches its checksum. ``progress``
    is called with the number of chunks done after each chunk. A URL (with
    ``storage_options``) is read through zarr: a missing shard or chunk object and
    every checksum are checked (a chunk missing *inside* a shard is read as zeros
    there; daskimg never writes partial shards).

    Examples
    --------
    >>> di.storeinfo.verify("out/train.zarr.zip")  # doctest: +SKIP
    []
    """
    url = _url(path, storage_options)
    if url is not None:
        return _verify_url(url, storage_options, progress)
    p = _local(path)
    try:
        attrs = read_attrs(p, check_complete=False)
        reader = StoreReader(p)
        group = open_group(p)
    except ChecksumError as e:  # e.g. a truncated zip; the message names it and the fix
        return [Problem("(store)", -1, str(e))]
    problems: list[Problem] = []
    if attrs.get("complete") is not True:
        problems.append(Problem("(store)", -1, "incomplete: complete is not true"))
    n_expected = attrs.get("num_samples")
    for name, arr in group.arrays():
        lay = reader.layout(name)
        if n_expected is not None and lay.shape[0] != n_expected:
            problems.append(Problem(name, -1, f"has {lay.shape[0]} rows, expected {n_expected}"))
        for c in range(lay.num_chunks):
            try:
                if lay.kind is not None:
                    reader.read_chunk(name, c)
                else:
                    a, b = lay.chunk_rows(c)
                    _check_via_zarr(reader, arr, name, c, a, b)
            except (ChecksumError, DaskImgError, ValueError, RuntimeError, OSError) as e:
                problems.append(Problem(name, c, str(e)))
            if progress is not None:
                progress(1)
    return problems


def _verify_url(
    url: str,
    storage_options: Mapping[str, Any] | None,
    progress: Callable[[int], None] | None,
) -> list[Problem]:
    from .store.url import open_store

    store, attrs, sizes = open_store(url, storage_options, check_complete=False)
    group = zarr.open_group(store, mode="r")
    problems: list[Problem] = []
    if attrs.get("complete") is not True:
        problems.append(Problem("(store)", -1, "incomplete: complete is not true"))
    n_expected = attrs.get("num_samples")
    for name, arr in group.arrays():
        n = arr.shape[0]
        if n_expected is not None and n != n_expected:
            problems.append(Problem(name, -1, f"has {n} rows, expected {n_expected}"))
        rows = int(attrs.get("chunk_len") or arr.chunks[0])
        grid = (arr.shards or arr.chunks)[0]
        for c in range(-(-n // rows) if n else 0):
            a, b = c * rows, min((c + 1) * rows, n)
            key = arr.metadata.encode_chunk_key((a // grid, *(0,) * (arr.ndim - 1)))
            try:
                if f"{name}/{key}" not in sizes:
                    raise ChecksumError(f"its object {name}/{key} is missing")
                arr[a:b]  # zarr's crc32c codec raises on a mismatch
            except (ChecksumError, DaskImgError, ValueError, RuntimeError, OSError) as e:
                problems.append(Problem(name, c, str(e)))
            if progress is not None:
                progress(1)
    return problems


def _check_via_zarr(
    reader: StoreReader, arr: zarr.Array, name: str, c: int, a: int, b: int
) -> None:
    # zarr fills a missing chunk with the fill value, so check presence first
    lay = reader.layout(name)
    if lay.shard_len == lay.chunk_len:
        reader.chunk_location(name, c)
    else:
        shard, j = divmod(c, lay.chunks_per_shard)
        index = reader._shard_index(lay, shard)
        if index[j, 0] == np.uint64(2**64 - 1):
            raise ChecksumError(f"chunk {c} is missing from its shard")
    arr[a:b]  # zarr's crc32c codec raises on a mismatch


def count_chunks(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> int:
    """Chunks that :func:`verify` reads (for a progress bar)."""
    url = _url(path, storage_options)
    if url is not None:
        from .store.url import open_store

        store, attrs, _ = open_store(url, storage_options, check_complete=False)
        total = 0
        for _, arr in zarr.open_group(store, mode="r").arrays():
            rows = int(attrs.get("chunk_len") or arr.chunks[0])
            total += -(-arr.shape[0] // rows)
        return total
    p = _local(path)
    try:
        reader = StoreReader(p)
        group = open_group(p)
    except ChecksumError:
        return 0  # verify reports it
    return sum(reader.layout(name).num_chunks for name, _ in group.arrays())


def info(
    path: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A summary of a store: arrays, codec, compression ratio, classes with counts, attributes.

    ``path`` may be a URL, with fsspec ``storage_options``.

    Examples
    --------
    >>> print(di.storeinfo.format_info(di.storeinfo.info("out/train.zarr.zip")))  # doctest: +SKIP
    """
    url = _url(path, storage_options)
    sizes: dict[str, int] = {}
    if url is not None:
        from .store.url import open_store

        store, attrs, sizes = open_store(url, storage_options, check_complete=False)
        group = zarr.open_group(store, mode="r")
        p = url
    else:
        p = _local(path)
        attrs = read_attrs(p, check_complete=False)  # a damaged zip: ChecksumError naming it
        group = open_group(p)
    arrays = {}
    for name, arr in group.arrays():
        # strings have no fixed size per sample (itemsize is a pointer's): no ratio
        text = arr.dtype.kind in "OTU"
        nbytes = None if text else int(np.prod(arr.shape)) * arr.dtype.itemsize
        stored = (
            sum(v for k, v in sizes.items() if k.startswith(name + "/"))
            if url is not None
            else _stored_bytes(p, name)
        )
        arrays[name] = {
            "shape": list(arr.shape),
            "dtype": "str" if text else str(arr.dtype),
            "chunks": list(arr.chunks),
            "shards": list(arr.shards) if arr.shards else None,
            "stored_bytes": stored,
            "ratio": (nbytes / stored) if nbytes and stored else None,
        }
    counts: dict[str, int] = {}
    if "labels" in arrays and attrs.get("classes"):
        labels = np.asarray(cast(Any, group["labels"])[...])
        classes = attrs["classes"]
        for i, c in enumerate(classes):
            counts[c] = int((labels == i).sum())
    return {
        "path": url or os.path.abspath(p),
        "file_bytes": sum(sizes.values()) if url is not None else _total_bytes(p),
        "arrays": arrays,
        "class_counts": counts,
        "attrs": attrs,
    }


def _stored_bytes(path: str, name: str) -> int:
    if os.path.isfile(path):
        import zipfile

        with zipfile.ZipFile(path) as zf:
            return sum(i.file_size for i in zf.infolist() if i.filename.startswith(name + "/"))
    total = 0
    for dirpath, _, files in os.walk(os.path.join(path, name)):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def _total_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def format_info(summary: dict[str, Any]) -> str:
    """``info`` as readable text (what ``daskimg info`` prints)."""
    a = summary["attrs"]
    lines = [
        f"store         {summary['path']}  ({_human(summary['file_bytes'])})",
        f"format        version {a.get('format_version')}, complete={a.get('complete')}",
        f"split         {a.get('split')}   samples {a.get('num_samples')}",
        f"order         {a.get('order')}"
        + (f" (seed {a.get('seed')})" if a.get("order") == "shuffled" else ""),
        f"codec         {a.get('codec')} + crc32c",
        "arrays:",
    ]
    for name, arr in summary["arrays"].items():
        ratio = f"{arr['ratio']:.2f}x" if arr["ratio"] else "-"
        shards = f" shards {tuple(arr['shards'])}" if arr["shards"] else ""
        lines.append(
            f"  {name:<12} {tuple(arr['shape'])!s:<24} {arr['dtype']:<8} chunks {tuple(arr['chunks'])}"
            f"{shards}  stored {_human(arr['stored_bytes'])}  ratio {ratio}"
        )
    if summary["class_counts"]:
        lines.append("classes:")
        lines.extend(f"  {c:<20} {n}" for c, n in summary["class_counts"].items())
    skipped = a.get("skipped") or []
    lines.append(f"skipped files {len(skipped)}")
    lines.extend(f"  {p}: {why}" for p, why in skipped[:20])
    if len(skipped) > 20:
        lines.append(f"  ... and {len(skipped) - 20} more (see the 'skipped' attribute)")
    src = a.get("source") or {}
    if src:
        lines.append("source        " + ", ".join(f"{k}={v}" for k, v in src.items()))
    lines.append(
        "created with  " + ", ".join(f"{k} {v}" for k, v in (a.get("created_with") or {}).items())
    )
    return "\n".join(lines)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"
