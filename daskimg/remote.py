"""Object storage: fsspec URLs (``s3://bucket/...``) as sources and as stores.

A path with a protocol (``s3://``, ``gs://``, ``memory://``, ...) is read and written
through fsspec with the caller's ``storage_options`` (for s3: ``key``, ``secret``,
``client_kwargs={"endpoint_url": ...}``, ``anon``, ...). fsspec and the backend (s3fs)
are imported only when a URL is used: ``pip install "daskimg[s3]"``.

Reading files: a decode task gets the URLs of its block and a picklable
:class:`RemoteFiles` (protocol + options), never an open file, so the same graph runs
on threads, processes and ``distributed`` workers; each task fetches its files
concurrently (``fs.cat``), a few at a time, and decodes them from memory.
"""

from __future__ import annotations

import os
import posixpath
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import DecodeError, ProcessLocalError

__all__ = ["RemoteFiles", "anchored", "filesystem", "is_url", "local_path", "protocol_of"]

#: files a decode task fetches at once: their bytes are held in memory together
FETCH_FILES = 16
#: protocols whose uploads are atomic (an object appears only once it is complete)
ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"})


def anchored(path: Any) -> Any:
    """A local path as the absolute path it names from here (the working folder now); URLs
    and other sources as they are. Files and stores are opened later — when a set is
    computed, in a DataLoader worker or a spawned process — maybe from another working
    folder (a notebook's ``%cd``), where the same relative name is another file."""
    if not isinstance(path, (str, os.PathLike)) or is_url(path):
        return path
    path = os.fspath(path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def is_url(path: Any) -> bool:
    """True for a string with a protocol (``s3://...``, ``zip::s3://...``); False for local paths.

    Examples
    --------
    >>> is_url("s3://bucket/train.zarr.zip"), is_url("out/train.zarr.zip")
    (True, False)
    """
    return isinstance(path, str) and "://" in path


def protocol_of(url: str) -> str:
    """The protocol of ``url`` (``"s3"`` for ``s3://bucket/key``)."""
    return url.split("://", 1)[0].split("::")[-1]


def local_path(url: str) -> str | None:
    """The local path of a ``file://`` URL (written with the local, locked code path), else None."""
    if is_url(url) and protocol_of(url) in ("file", "local") and "::" not in url:
        return url.split("://", 1)[1]
    return None


def as_local(path: Any) -> Any:
    """A source named by a plain ``file://`` URL as the local path it is, else ``path`` as
    given: read through fsspec's local file system, a folder's links went unchecked (a
    linked class folder was dropped, a file linked into another class read twice) and a
    file's state was its time and size only. Read as a path, the set is the same as the
    same tree named by its path.

    Examples
    --------
    >>> as_local("file:///data/photos"), as_local("s3://bucket/photos")
    ('/data/photos', 's3://bucket/photos')
    """
    if isinstance(path, str):
        local = local_path(path)
        if local is not None:
            return local
    return path


def _fsspec(url: str) -> Any:
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            f"{url!r} is a URL, and URLs are read and written with fsspec: "
            "pip install 'daskimg[s3]' (fsspec and s3fs)"
        ) from None
    return fsspec


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path on it (without the protocol).

    Parameters
    ----------
    url
        E.g. ``"s3://bucket/photos"``.
    storage_options
        Options of the filesystem (for s3: ``key``, ``secret``, ``client_kwargs``, ...).

    Returns
    -------
    tuple
        ``(filesystem, path)``; fsspec caches filesystems by their options.

    Raises
    ------
    ImportError
        Naming the URL and the fix when fsspec or the backend (s3fs) is missing.

    Examples
    --------
    >>> fs, path = filesystem("memory://bucket/x.png")
    >>> path
    '/bucket/x.png'
    """
    fsspec = _fsspec(url)
    options = dict(storage_options or {})
    if _signed(url, options):
        url, options = _quoted(url), {**options, "encoded": True}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise ImportError(
            f"cannot open {url!r}: {exc}. For s3:// URLs: pip install 'daskimg[s3]'"
        ) from None
    except ValueError as exc:
        raise ValueError(f"cannot open {url!r}: {exc}") from None
    return fs, path


def _signed(url: str, options: Mapping[str, Any]) -> bool:
    """Whether ``url`` is an http(s) URL with a query (a signed URL's signature) that is to
    be sent as it was given: fsspec re-quotes it otherwise (a signature's %2F went out as
    /), and a strict server refuses it. (``encoded`` in the options: the caller's choice.)"""
    return protocol_of(url) in ("http", "https") and "?" in url and "encoded" not in options


def _quoted(url: str) -> str:
    """``url`` with its path quoted as fsspec quotes one (a space, a letter past ASCII;
    '%XX' kept), its query as it is."""
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=~")
    return urllib.parse.urlunsplit(parts._replace(path=path))


def check_options(path: Any, storage_options: Mapping[str, Any] | None) -> None:
    """Refuse ``storage_options`` given with a local path (they would be silently ignored)."""
    if storage_options is not None and not is_url(path):
        raise ValueError(
            f"storage_options apply to URLs such as 's3://bucket/key'; {str(path)!r} is a "
            "local path. Drop storage_options, or pass a URL."
        )


def in_another_process(url: str, origin: int) -> ProcessLocalError | None:
    """The error for ``url`` not found here when it is a ``memory://`` object named in
    process ``origin``, not this one: fsspec's in-memory filesystem lives in one process,
    so a dask worker process (a ``distributed`` cluster's, the ``"processes"`` scheduler's)
    sees none of it, and its objects read as missing there. None otherwise."""
    if protocol_of(url) != "memory" or origin == os.getpid():
        return None
    return process_local(
        url,
        f"this task runs in another process (pid {os.getpid()}: a dask worker, or a "
        "DataLoader worker) that has none",
    )


def started_without(url: str) -> ProcessLocalError | None:
    """The error for the ``memory://`` ``url`` not found in a process another one started
    (a DataLoader worker spawned with only the URL, a dask worker): its objects may be the
    parent's, which this process never had. None otherwise."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if protocol_of(url) != "memory" or parent is None:
        return None
    fs, path = filesystem(url)
    if fs.exists(path.rstrip("/").rpartition("/")[0] or "/"):
        return None  # its folder is here (a forked child has its parent's): a name not there
    return process_local(
        url,
        f"this process (pid {os.getpid()}, a DataLoader or dask worker?) was started by "
        f"another (pid {parent.pid}); one spawned begins with none of them",
    )


def process_local(url: str, why: str) -> ProcessLocalError:
    """The error for the ``memory://`` ``url`` used where dask's tasks run in other
    processes (``why``: how they do)."""
    return ProcessLocalError(
        f"{url!r}: memory:// objects live in the process that made them (fsspec's in-memory "
        f"filesystem), and {why}. Read and write memory:// on this process's threads "
        "(dask.config.set(scheduler='threads'), or a LocalCluster(processes=False)), or keep "
        "the data on a disk or in object storage the workers reach"
    )


@dataclass(frozen=True)
class RemoteFiles:
    """How a decode task reaches its files: a protocol and the options for fsspec.

    Picklable and small, so tasks carry it to any worker; the filesystem is made (and
    cached by fsspec) where the task runs. Its repr never shows the options.

    Parameters
    ----------
    protocol
        ``"s3"``, ``"gs"``, ...
    storage_options
        Options of the fsspec filesystem.

    Examples
    --------
    >>> RemoteFiles("s3", {"anon": True})
    RemoteFiles(protocol='s3', storage_options=<1 keys>)
    """

    protocol: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    #: the process that named the files (memory:// objects live in it alone)
    origin: int = field(default_factory=os.getpid, compare=False, hash=False, repr=False)

    def __repr__(self) -> str:
        # never print credentials
        return f"RemoteFiles(protocol={self.protocol!r}, storage_options=<{len(self.storage_options)} keys>)"

    def filesystem(self, **more: Any) -> Any:
        fsspec = _fsspec(f"{self.protocol}://")
        try:
            return fsspec.filesystem(self.protocol, **{**self.storage_options, **more})
        except ImportError as exc:
            raise ImportError(
                f"cannot read {self.protocol}:// files: {exc}. For s3://: pip install 'daskimg[s3]'"
            ) from None

    def fetch(self, urls: Sequence[str]) -> list[bytes | DecodeError]:
        """The content of each URL, fetched concurrently; a missing file gives a DecodeError.

        Other failures (credentials, network) raise: they are not a property of one file,
        so ``on_error="skip"`` must not turn them into skipped samples.
        """
        fs = self.filesystem()
        from fsspec.core import strip_protocol  # importable: filesystem() imported fsspec

        # cat_ranges: concurrent on async filesystems, and no glob expansion of names with '[*?'
        signed = [i for i, u in enumerate(urls) if _signed(u, self.storage_options)]
        plain = sorted(set(range(len(urls))) - set(signed))
        got: list[Any] = [None] * len(urls)
        for which, on, name in (
            (plain, fs, strip_protocol),
            (signed, self.filesystem(encoded=True) if signed else fs, _quoted),  # as given
        ):
            if which:
                values = on.cat_ranges(
                    [name(urls[i]) for i in which], None, None, on_error="return"
                )
                for i, value in zip(which, values, strict=True):
                    got[i] = value
        out: list[bytes | DecodeError] = []
        for url, value in zip(urls, got, strict=True):
            if isinstance(value, FileNotFoundError):
                elsewhere = in_another_process(url, self.origin)
                if elsewhere is not None:  # not the file's fault: on_error="skip" skips none
                    raise elsewhere
                out.append(
                    DecodeError(url, "no such file; check the URL and that the object exists")
                )
            elif isinstance(value, IsADirectoryError):
                out.append(DecodeError(url, "is a directory, not a file"))
            elif isinstance(value, BaseException):
                raise OSError(f"reading {url!r} failed: {value}") from value
            else:
                out.append(bytes(value))
        return out


def remote_files(
    urls: Sequence[str], storage_options: Mapping[str, Any] | None
) -> RemoteFiles | None:
    """The :class:`RemoteFiles` for a list of paths: None if they are local, an error if mixed."""
    remote = [is_url(u) for u in urls]
    if not any(remote):
        check_options(urls[0] if urls else "", storage_options)
        return None
    protocols = {protocol_of(u) for u in urls if is_url(u)}
    if not all(remote) or len(protocols) > 1:
        raise ValueError(
            "the paths mix local files and URLs, or several protocols "
            f"({sorted(protocols)}); read each kind separately"
        )
    return RemoteFiles(protocols.pop(), dict(storage_options or {}))


def join(url: str, rel: str) -> str:
    """``url/rel`` with ``rel`` normalized; a ``rel`` that climbs out of ``url`` is refused."""
    rel = posixpath.normpath(rel.replace("\\", "/"))
    if rel.startswith(("../", "/")) or rel == "..":
        raise ValueError(f"{rel!r} points outside {url!r}")
    return url.rstrip("/") + "/" + rel
