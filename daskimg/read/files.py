"""Read: lazy image and volume readers that build small dask graphs.

One task decodes a *block* of files (not one file), and the graph is written
directly, so building the array for a million paths takes a fraction of a second
and opens no file. Decoding itself is :mod:`daskimg.decode`.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import DecodeError, NoImagesFoundError
from ..remote import FETCH_FILES, RemoteFiles, check_options, filesystem, is_url, remote_files
from .decode import DecodeSpec, decode_file, decode_into

__all__ = ["DEFAULT_BLOCK", "FileSource", "RowSource", "expand_paths", "imread"]

logger = logging.getLogger("daskimg")

#: files decoded by one task; large enough to keep the graph small, small enough to balance 2+ workers
DEFAULT_BLOCK = 64

ON_ERROR = ("raise", "skip")


def expand_paths(
    pattern_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Turn a glob pattern (``**`` allowed) or an explicit list into a list of file paths.

    A pattern is expanded and sorted; an explicit list keeps its order. Directories that
    a pattern matches are left out (they are not files). An empty result is an error.
    A URL pattern (``s3://bucket/photos/**/*.jpg``) is listed with fsspec, using
    ``storage_options``, and gives full URLs.

    Examples
    --------
    >>> import daskimg as di, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = di.testing.make_image_folder(root, n=4)
    >>> len(expand_paths(str(root / "**" / "*.png")))
    4
    """
    if is_url(pattern_or_paths):
        return _expand_url(str(pattern_or_paths), storage_options)
    if isinstance(pattern_or_paths, (str, os.PathLike)):
        check_options(pattern_or_paths, storage_options)
        pattern = os.fspath(pattern_or_paths)
        paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not paths:
            raise NoImagesFoundError(
                f"no files match the pattern {pattern!r}; check the path, and use '**' "
                "to descend into subfolders (e.g. 'photos/**/*.jpg')"
            )
        return paths
    paths = [os.fspath(p) for p in pattern_or_paths]
    if not paths:
        raise NoImagesFoundError("the list of paths is empty; pass at least one file")
    if storage_options is not None and not any(is_url(p) for p in paths):
        check_options(paths[0], storage_options)
    return paths


def _expand_url(pattern: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Files matching a URL glob, as sorted full URLs (one listing call per folder level)."""
    fs, _ = filesystem(pattern, storage_options)
    found = fs.glob(pattern, detail=True)
    paths = sorted(fs.unstrip_protocol(p) for p, info in found.items() if info["type"] == "file")
    if not paths:
        raise NoImagesFoundError(
            f"no files match the pattern {pattern!r}; check the URL and storage_options, and "
            "use '**' to descend into subfolders (e.g. 's3://bucket/photos/**/*.jpg')"
        )
    return paths


class RowSource(Protocol):
    """A recipe for a lazy per-sample array that can be re-cut over any rows cheaply.

    ``take`` returns the recipe over chosen rows and ``to_dask`` builds a small graph
    (one task per block of rows), so subsets and shuffled orders never gather across
    the blocks of an existing graph.
    """

    def __len__(self) -> int: ...

    def take(self, indices: Sequence[int] | np.ndarray) -> RowSource: ...

    def to_dask(self, *, block: int | None = None) -> da.Array: ...


@dataclass(frozen=True)
class FileSource:
    """Files and how to decode them: the recipe behind a lazy image array.

    Holding the recipe (rather than only the dask array) lets subsets and permutations
    rebuild a fresh small graph over the chosen files instead of gathering across blocks.
    """

    paths: tuple[str, ...]
    spec: DecodeSpec
    block: int = DEFAULT_BLOCK
    #: set when ``paths`` are URLs: how tasks reach them (protocol and storage_options)
    remote: RemoteFiles | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.block, int) or self.block < 1:
            raise ValueError(
                f"chunks must be a positive number of files per block, got {self.block!r}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, indices: Sequence[int] | np.ndarray) -> FileSource:
        """The same recipe over ``paths[indices]`` (any order)."""
        idx = np.asarray(indices, dtype=np.int64)
        return FileSource(tuple(self.paths[i] for i in idx), self.spec, self.block, self.remote)

    def decode_file(self, i: int) -> np.ndarray:
        """Decode file ``i`` alone (local or remote); a bad file raises DecodeError."""
        if self.remote is None:
            return decode_file(self.paths[i], self.spec)
        return _decode_block((self.paths[i],), self.spec, self.remote)[0]

    def block_starts(self, block: int | None = None) -> range:
        return range(0, len(self.paths), block or self.block)

    def to_dask(self, *, block: int | None = None) -> da.Array:
        """A dask array ``(N, *sample_shape)`` whose tasks each decode a block; errors raise."""
        return _graph(self, block or self.block, _decode_block, "raise")

    def to_dask_masked(self, *, block: int | None = None) -> tuple[da.Array, da.Array]:
        """Pixels and a boolean ``ok`` mask from the same tasks; a bad file leaves ``ok`` False.

        Used where bad files are skipped: the caller drops rows whose mask is False, so a
        bad file never becomes a sample (its pixel rows are zeros only in this intermediate).
        Each block is decoded once; pixels and mask are two cheap views of its result.
        """
        block = block or self.block
        spec = self.spec
        n = len(self.paths)
        token = tokenize(self.paths, spec, block, self.remote, _options(self.remote))
        dec, pix, msk = f"imread-masked-{token}", f"imread-pixels-{token}", f"imread-ok-{token}"
        zeros = (0,) * len(spec.sample_shape)
        dsk: dict[Any, Any] = {}
        for i, s in enumerate(range(0, n, block)):
            block_paths = _paths_block(self.paths[s : s + block])
            dsk[(dec, i)] = (_decode_block_masked, block_paths, spec, *_extra(self))
            dsk[(pix, i, *zeros)] = (_first, (dec, i))
            dsk[(msk, i)] = (_second, (dec, i))
        sizes = tuple(min(block, n - s) for s in range(0, n, block))
        layers = {dec: {k: v for k, v in dsk.items() if k[0] == dec}}
        layers[pix] = {k: v for k, v in dsk.items() if k[0] == pix}
        layers[msk] = {k: v for k, v in dsk.items() if k[0] == msk}
        deps = {dec: set(), pix: {dec}, msk: {dec}}
        pixels = da.Array(
            HighLevelGraph(layers, {k: set(v) for k, v in deps.items()}),
            pix,
            (sizes, *((d,) for d in spec.sample_shape)),
            dtype=np.dtype(spec.dtype),
        )
        graph = HighLevelGraph({dec: layers[dec], msk: layers[msk]}, {dec: set(), msk: {dec}})
        mask = da.Array(graph, msk, (sizes,), dtype=bool)
        return pixels, mask


def _paths_block(paths: Any) -> np.ndarray:
    """A block's paths as an object array: dask passes it to the task as it is (a list or
    tuple in a task would be searched for keys of other tasks)."""
    out = np.empty(len(paths), dtype=object)
    out[:] = list(paths)
    return out


def _first(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return pair[0]


def _second(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return pair[1]


def _options(remote: RemoteFiles | None) -> Any:
    return None if remote is None else dict(remote.storage_options)


def _extra(source: FileSource) -> tuple[RemoteFiles, ...]:
    """Extra task arguments: the URL access recipe for remote files, nothing for local ones."""
    return () if source.remote is None else (source.remote,)


def _graph(source: FileSource, block: int, func: Callable[..., Any], mode: str) -> da.Array:
    spec = source.spec
    n = len(source.paths)
    sample = spec.sample_shape
    token = (
        tokenize(source.paths, spec, block)
        if source.remote is None
        else tokenize(source.paths, spec, block, source.remote, _options(source.remote))
    )
    name = f"imread-{mode}-" + token
    zeros = (0,) * len(sample)
    starts = range(0, n, block)
    extra = _extra(source)
    # classic tuple tasks (dask's public graph spec); the paths travel as one opaque array
    dsk: dict[Any, Any] = {
        (name, i, *zeros): (func, _paths_block(source.paths[s : s + block]), spec, *extra)
        for i, s in enumerate(starts)
    }
    chunks = (tuple(min(block, n - s) for s in starts), *((d,) for d in sample))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks, dtype=np.dtype(spec.dtype))


def _fetched(
    paths: tuple[str, ...], remote: RemoteFiles
) -> Iterator[tuple[int, str, bytes | DecodeError]]:
    """Each remote file's content (or why it is unreadable), fetched ``FETCH_FILES`` at a time."""
    for s in range(0, len(paths), FETCH_FILES):
        part = paths[s : s + FETCH_FILES]
        for j, data in enumerate(remote.fetch(part)):
            yield s + j, part[j], data


def _decode_block(
    paths: tuple[str, ...], spec: DecodeSpec, remote: RemoteFiles | None = None
) -> np.ndarray:
    out = np.empty((len(paths), *spec.sample_shape), dtype=spec.dtype)
    if remote is not None:
        for i, p, data in _fetched(paths, remote):
            if isinstance(data, DecodeError):
                raise data
            decode_into(p, spec, out[i], data=data)
        return out
    for i, p in enumerate(paths):
        decode_into(p, spec, out[i])
    return out


def _decode_block_masked(
    paths: tuple[str, ...], spec: DecodeSpec, remote: RemoteFiles | None = None
) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(paths), *spec.sample_shape), dtype=spec.dtype)
    ok = np.ones(len(paths), dtype=bool)
    contents = (
        ((i, p, None) for i, p in enumerate(paths)) if remote is None else _fetched(paths, remote)
    )
    for i, p, data in contents:
        try:
            if isinstance(data, DecodeError):
                raise data
            decode_into(p, spec, out[i], data=data)
        except DecodeError as e:
            ok[i] = False
            out[i] = 0
            logger.warning("skipping %s", e)
    return out, ok


def _decode_block_skip(
    paths: tuple[str, ...], spec: DecodeSpec, remote: RemoteFiles | None = None
) -> np.ndarray:
    out, ok = _decode_block_masked(paths, spec, remote)
    return out[ok]


def imread(
    pattern_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    size: Sequence[int],
    channels: int = 3,
    dtype: str = "uint8",
    resize: str = "stretch",
    draft: bool = True,
    on_error: str = "raise",
    chunks: int = DEFAULT_BLOCK,
    storage_options: Mapping[str, Any] | None = None,
) -> da.Array:
    """Read images (or volumes) lazily into a dask array; nothing is decoded yet.

    Parameters
    ----------
    pattern_or_paths
        A glob pattern (sorted; ``**`` descends into subfolders) or an explicit list of
        files (order kept). The format is sniffed from each file's content. URLs such as
        ``"s3://bucket/photos/*.jpg"`` are listed and read with fsspec (``pip install
        'daskimg[s3]'``); each task fetches its block's files itself.
    size
        ``(H, W)`` for images, giving ``(N, H, W, channels)``; ``(D, H, W)`` for volumes
        (``.npy`` / TIFF stacks), giving ``(N, D, H, W, 1)``. Every sample is resized or
        zoomed to this shape.
    channels
        1 (grayscale), 3 (RGB; alpha dropped) or 4 (RGBA; opaque alpha added).
    dtype
        ``"uint8"`` (16-bit sources are scaled), ``"uint16"`` or ``"float32"`` (0..1).
    resize
        ``"stretch"``, ``"crop"`` (fill, then centre-crop) or ``"pad"`` (fit, then pad).
    draft
        Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the source is at least twice the
        target (much faster; a small pixel difference, see :mod:`daskimg.decode`).
    on_error
        ``"raise"``: computing a block with a bad file raises :class:`~daskimg.errors.DecodeError`
        naming it. ``"skip"``: bad files are left out, so the array has unknown chunk sizes
        along axis 0 (``x.compute_chunk_sizes()`` resolves them); use
        :func:`daskimg.from_folder` or :class:`daskimg.ImageSet` to keep labels aligned and
        to get the list of skipped files.
    chunks
        Files per task (block). Each block is one task in the graph.
    storage_options
        For URLs: options of the fsspec filesystem, e.g. for s3 ``{"key": ..., "secret":
        ..., "client_kwargs": {"endpoint_url": ...}}`` or ``{"anon": True}``. They travel
        with the graph to the workers that read the files.

    Returns
    -------
    dask.array.Array

    Examples
    --------
    >>> import daskimg as di, tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = di.testing.make_image_folder(root, n=6, size=(32, 40))
    >>> x = di.imread(str(root / "**" / "*.png"), size=(16, 16))
    >>> x.shape, x.dtype.name
    ((6, 16, 16, 3), 'uint8')
    >>> x[:2].compute().shape
    (2, 16, 16, 3)
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    spec = DecodeSpec(size=tuple(size), channels=channels, dtype=dtype, resize=resize, draft=draft)
    paths = tuple(expand_paths(pattern_or_paths, storage_options=storage_options))
    source = FileSource(paths, spec, chunks, remote_files(paths, storage_options))
    if on_error == "raise":
        return source.to_dask()
    arr = _graph(source, source.block, _decode_block_skip, "skip")
    unknown = (tuple(np.nan for _ in arr.chunks[0]), *arr.chunks[1:])
    return da.Array(arr.dask, arr.name, unknown, dtype=arr.dtype)


def relative_paths(paths: Sequence[str], root: str | os.PathLike[str]) -> np.ndarray:
    """Each path relative to ``root``, with forward slashes, as a numpy string array."""
    if is_url(root):
        prefix = str(root).rstrip("/") + "/"
        return np.array(
            [p[len(prefix) :] if p.startswith(prefix) else p for p in paths], dtype=object
        )
    # lexical, not resolved: a file may be a symbolic link into a cache outside the root
    # (Hugging Face, DVC, git-annex), and its name under the root is the one to keep
    base = os.path.abspath(root)
    rel = [Path(os.path.relpath(os.path.abspath(p), base)).as_posix() for p in paths]
    return np.array(rel, dtype=object)
