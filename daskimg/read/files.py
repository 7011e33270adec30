"""Read: :func:`imread` — image and volume files, listed by pattern, as a lazy dask array.

The graph is built by :class:`~daskimg.read.source.FileSource` (one task per block of
files), so building the array for a million paths takes a fraction of a second and opens
no file. Decoding itself is :mod:`daskimg.read.decode`.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import NoImagesFoundError
from ..remote import RemoteFiles, as_local, check_options, filesystem, is_url, remote_files
from .decode import DecodeSpec
from .fileio import SYSTEM_FOLDERS, first_readable
from .source import DEFAULT_BLOCK, FileSource, RowSource
from .volumes import volume_dtype

logger = logging.getLogger("daskimg")

__all__ = [
    "DEFAULT_BLOCK",
    "FileSource",
    "RowSource",
    "expand_paths",
    "imread",
    "relative_paths",
    "resolve_dtype",
]

ON_ERROR = ("raise", "skip")


def _once_each(paths: list[str], pattern: str) -> list[str]:
    """``paths`` with each file once: ``**`` follows links to folders, so a link to another
    folder of the tree (or up to its root) matched the same files again; the first match
    is kept (the paths are sorted), the others are left out, logged."""
    real_dirs: dict[str, str] = {}
    first: dict[str, str] = {}
    out, again = [], []
    for p in paths:
        d, name = os.path.split(p)
        real_dir = real_dirs.get(d)
        if real_dir is None:
            real_dir = real_dirs[d] = os.path.realpath(d)
        real = os.path.join(real_dir, name)
        if real in first:
            again.append((p, first[real]))
            continue
        first[real] = p
        out.append(p)
    if again:
        logger.warning(
            "imread(%r): left out %d match(es) reached again through a link to a folder "
            "(each file is read once): %s%s",
            pattern,
            len(again),
            "; ".join(f"{a!r} is {b!r}" for a, b in again[:3]),
            f" and {len(again) - 3} more" if len(again) > 3 else "",
        )
    return out


def _not_system(found: list[str], pattern: str) -> tuple[list[str], list[str]]:
    """``found`` split into the files to read and those a wildcard reached inside
    :data:`SYSTEM_FOLDERS` (a NAS's ``@eaDir`` thumbnails, copies of the photos; its
    recycle bin), which ``from_folder`` leaves out too. A system folder the pattern names
    itself (``*/@eaDir/*.jpg``) is read."""
    skipped = _skipped_system_folders(pattern)
    kept: list[str] = []
    left: list[str] = []
    for f in found:
        folders = f.replace(os.sep, "/").split("/")[:-1]
        (left if any(d.casefold() in skipped for d in folders) else kept).append(f)
    if left and kept:
        logger.warning("imread(%r): %s", pattern, _left_out(left))
    return kept, left


def _skipped_system_folders(pattern: str) -> frozenset[str]:
    """The :data:`SYSTEM_FOLDERS` (casefolded) a pattern's wildcards leave out: all but
    those it names itself."""
    return SYSTEM_FOLDERS - {p.casefold() for p in pattern.replace(os.sep, "/").split("/")}


def _left_out(left: list[str]) -> str:
    return (
        f"left out {len(left)} file(s) in folders systems keep beside the data (a NAS's "
        f"thumbnails, a recycle bin), as from_folder does: "
        + ", ".join(repr(f) for f in sorted(left)[:3])
        + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        + ". Name such a folder in the pattern to read it"
    )


def expand_paths(
    pattern_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Turn a glob pattern (``**`` allowed) or an explicit list into a list of file paths.

    A pattern is expanded and sorted (a pattern ending in ``*.ext`` matches the extension
    in any letter case, see :func:`any_case_suffix`); an explicit list keeps its order. Directories that
    a pattern matches are left out (they are not files); a broken link (a git-annex or DVC
    file not fetched yet), a named pipe or a device is kept, so decoding names it.
    An empty result is an error.
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
    pattern_or_paths = as_local(pattern_or_paths)  # file:// as the paths they are
    if is_url(pattern_or_paths):
        return _expand_url(str(pattern_or_paths), storage_options)
    # relative paths are taken from the folder the set is made in: the files are opened
    # when computed, after a chdir (a notebook's %cd) or in a worker started elsewhere
    if isinstance(pattern_or_paths, (str, os.PathLike)):
        check_options(pattern_or_paths, storage_options)
        pattern = os.fspath(pattern_or_paths)
        here = "" if os.path.isabs(pattern) else os.getcwd()
        if os.path.lexists(pattern) and not os.path.isdir(pattern):
            # a file's own name, even with glob characters ('x[1].png')
            return [os.path.join(here, pattern)]
        found = [
            f
            for f in _glob(any_case_suffix(pattern), here, pattern)
            if not os.path.isdir(os.path.join(here, f))
        ]  # files, broken links, pipes, devices (decoding names them); here's '[' is no glob
        kept, left = _not_system(found, pattern)
        paths = _once_each(sorted(os.path.join(here, f) for f in kept), pattern)
        if not paths:
            literal = _literal_folder(pattern, here)
            raise NoImagesFoundError(
                f"no files match the pattern {pattern!r}; "
                + (
                    f"the folder {literal!r} is there, but its name holds glob characters "
                    "('[', '?', '*'), which the pattern reads as a pattern: escape it, "
                    f"glob.escape({literal!r}) + {pattern[len(literal) :]!r}, or pass a "
                    "list of paths"
                    if literal
                    else "check the path, and use '**' to descend into subfolders (e.g. "
                    "'photos/**/*.jpg')"
                )
                + (f" ({_left_out(left)})" if left else "")
            )
        return paths
    paths = [as_local(os.fspath(p)) for p in pattern_or_paths]
    if not paths:
        raise NoImagesFoundError("the list of paths is empty; pass at least one file")
    nul = next((i for i, p in enumerate(paths) if "\0" in p), None)
    if nul is not None:  # it failed when decoded, as "embedded null byte", naming nothing
        raise ValueError(
            f"path {nul} of the list, {paths[nul]!r}, holds a NUL character, which no file "
            "name has: the list was read from damaged text; repair it"
        )
    if storage_options is not None and not any(is_url(p) for p in paths):
        check_options(paths[0], storage_options)
    if not is_url(paths[0]) and not all(map(os.path.isabs, paths)):
        here = os.getcwd()
        paths = [p if os.path.isabs(p) else os.path.join(here, p) for p in paths]
    return paths


_MAGIC = re.compile(r"[*?[]")


def _glob(pattern: str, here: str, shown: str) -> list[str]:
    """``glob.glob(pattern, root_dir=here, recursive=True)``, except that a link to a folder
    above it (a loop: ``latest -> .``) is not followed, logged, and a folder that cannot be
    listed is an error naming it. ``glob`` follows every link: two such links made about
    2**40 paths, and ``imread`` never returned; a folder it cannot list it leaves out
    without a word. Wildcards match as ``glob``'s: not names that begin with a dot, ``**``
    any number of folders (none too)."""
    parts: list[str] = []
    for part in pattern.split(os.sep):
        if not (part == "**" and parts and parts[-1] == "**"):
            parts.append(part)  # '**/**' is '**'
    skipped = _skipped_system_folders(pattern)
    out: list[str] = []

    def listing(rel: str) -> list[os.DirEntry[str]]:
        path = os.path.join(here, rel) if rel else (here or os.curdir)
        try:
            with os.scandir(path) as entries:
                return list(entries)  # (the matches are sorted once, at the end)
        except OSError as e:
            folder = os.path.basename(os.path.normpath(path)).casefold()
            if folder in skipped:
                # lost+found (root's, on every ext4 disk), a NAS's @eaDir: their files are
                # left out anyway (_not_system), the folder need not be readable
                logger.debug("imread(%r): %s not listed (%s)", shown, path, e.strerror)
                return []
            raise type(e)(
                e.errno,
                f"imread({shown!r}): cannot list the folder {path!r} ({e.strerror}): its "
                "files would be left out. Make it readable, or name the folders to read in "
                "the pattern",
            ) from e

    def is_dir(e: os.DirEntry[str]) -> bool:
        try:
            return e.is_dir()  # a link to a folder is a folder
        except OSError:
            return False

    def walk(rel: str, i: int, above: frozenset[tuple[int, str]]) -> None:
        part = parts[i]
        last = i == len(parts) - 1
        if part == "**":
            real = os.path.realpath(os.path.join(here, rel) if rel else (here or os.curdir))
            if (i, real) in above:  # the same folder, at the same '**': a loop
                logger.warning(
                    "imread(%r): not following %r: it leads back to %r, a folder above it "
                    "(a loop); each folder is read once",
                    shown, rel, real,
                )  # fmt: skip
                return
            above = above | {(i, real)}
            if not last:
                walk(rel, i + 1, above)  # '**' as no folder at all
            for e in listing(rel):
                if e.name.startswith("."):
                    continue  # as glob: hidden names only when the pattern names them
                if is_dir(e):
                    walk(os.path.join(rel, e.name), i, above)
                elif last:
                    out.append(os.path.join(rel, e.name))
            return
        if not part:  # 'a//b': the same folder ('a/' last: a folder, no file)
            if not last:
                walk(rel, i + 1, above)
            return
        if not _MAGIC.search(part):
            path = os.path.join(rel, part)
            if last:
                if os.path.lexists(os.path.join(here, path)):
                    out.append(path)
            elif os.path.isdir(os.path.join(here, path)):
                walk(path, i + 1, above)
            return
        for e in listing(rel):
            if e.name.startswith(".") and not part.startswith("."):
                continue
            if fnmatch.fnmatchcase(e.name, part):
                if last:
                    out.append(os.path.join(rel, e.name))
                elif is_dir(e):
                    walk(os.path.join(rel, e.name), i + 1, above)

    if parts[0] == "" and len(parts) > 1:  # an absolute pattern: from the root
        walk(os.sep, 1, frozenset())
    else:
        walk("", 0, frozenset())
    return out


def _literal_folder(pattern: str, here: str) -> str | None:
    """The folder above ``pattern``'s last part that is there as written and whose name
    holds glob characters (``photos/b [2020]/*.jpg``: ``[2020]`` is a character set)."""
    folder = os.path.dirname(pattern)
    while folder and folder != os.path.dirname(folder):
        if re.search(r"[\[?*]", folder) and os.path.isdir(os.path.join(here, folder)):
            # only if escaping it finds files: a folder of .jpg asked for *.png is no match
            # either way ("check the path" then)
            escaped = glob.escape(folder) + pattern[len(folder) :]
            found = glob.glob(any_case_suffix(escaped), root_dir=here or None, recursive=True)
            return folder if found else None
        folder = os.path.dirname(folder)
    return None


def any_case_suffix(pattern: str) -> str:
    """``pattern`` with the extension after its last ``*`` matching in any letter case
    (``photos/**/*.jpg`` finds ``IMG_0001.JPG`` too, as :func:`~daskimg.from_folder` does;
    a case-sensitive glob left such files out without a word).

    >>> any_case_suffix("photos/**/*.jpg")
    'photos/**/*.[jJ][pP][gG]'
    """
    m = re.search(r"\*\.([A-Za-z0-9]+)$", pattern)
    if m is None:
        return pattern
    ext = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in m.group(1))
    return pattern[: m.start(1)] + ext


def _expand_url(pattern: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Files matching a URL glob, as sorted full URLs (one listing call per folder level)."""
    fs, _ = filesystem(pattern, storage_options)
    found = fs.glob(any_case_suffix(pattern), detail=True)
    paths = sorted(fs.unstrip_protocol(p) for p, info in found.items() if info["type"] == "file")
    if not paths:
        raise NoImagesFoundError(
            f"no files match the pattern {pattern!r}; check the URL and storage_options, and "
            "use '**' to descend into subfolders (e.g. 's3://bucket/photos/**/*.jpg')"
        )
    return paths


def imread(
    pattern_or_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    size: Sequence[int],
    channels: int = 3,
    dtype: str | None = None,
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
        Images: ``"uint8"`` (the default; 16-bit sources are scaled), ``"uint16"`` or
        ``"float32"`` (0..1). Volumes: by default the dtype of the first file (its header
        is read now), so int16 CT scans stay int16 and floats stay floats; or any of
        ``"int16"``, ``"float32"``, ... (:data:`~daskimg.read.volumes.VOLUME_DTYPES`).
        Values are never rescaled: a narrower dtype than a file's is checked when it is
        decoded, and values that do not fit are an error naming the file and the range.
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
    paths = tuple(expand_paths(pattern_or_paths, storage_options=storage_options))
    remote = remote_files(paths, storage_options)
    spec = DecodeSpec(
        size=tuple(size),
        channels=channels,
        dtype=resolve_dtype(dtype, size, paths, remote, skip=on_error == "skip"),
        resize=resize,
        draft=draft,
        dtype_taken=dtype is None,
    )
    source = FileSource(paths, spec, chunks, remote)
    return source.to_dask(skip=on_error == "skip")


def resolve_dtype(
    dtype: str | None,
    size: Sequence[int],
    files: Sequence[str],
    remote: RemoteFiles | None,
    *,
    skip: bool = False,
) -> str:
    """The sample dtype: ``dtype`` if given, else uint8 for images and the first volume's.

    Reads the header of the first of ``files`` (volumes) only when ``dtype`` is None; a URL
    is fetched. ``skip`` (``on_error="skip"``): a file whose header cannot be read is
    passed over for the next (it is skipped and recorded when the set is decoded, as any
    bad file); the first error is raised if none can be read.
    """
    if dtype is not None:
        return dtype
    if len(size) != 3:
        return "uint8"
    return first_readable(files, remote, volume_dtype, skip=skip).name


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
    prefix = base.rstrip(os.sep) + os.sep
    cut = len(prefix)

    def rel(p: str) -> str:
        # a path under the root as listed (absolute, no "." or ".." parts, no "//"): cut
        if os.sep == "/" and p.startswith(prefix) and "/." not in p and "//" not in p[cut:]:
            return p[cut:]
        return Path(os.path.relpath(os.path.abspath(p), base)).as_posix()

    return np.array([rel(os.fspath(p)) for p in paths], dtype=object)
