"""Store: the bytes of a store at a URL — a ``*.zarr.zip`` object or a ``*.zarr`` folder of objects.

The two URL :class:`~daskimg.store.bytesource.ByteSource` classes: the checked reader reads
them as it reads a local store. Every read is a ranged request for a whole chunk or shard
index (see :mod:`daskimg.store.ranged` for how, and what was measured); a zip is never
downloaded whole, and a damaged, truncated or missing chunk is a
:class:`~daskimg.errors.ChecksumError` naming the store and the key, as on disk.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import ChecksumError, ServerError
from .bytesource import ByteSource, zip_members
from .ranged import KEEP, RETRIED, SMALL, SPAN, RangedObjects, asked_again, is_http, status_of

__all__ = ["ZIP_TAIL", "RemoteDir", "RemoteZip", "open_url_source"]


def open_url_source(url: str, kind: str, fs: Any, key: str) -> ByteSource:
    """The byte source of the store at ``url`` (``kind`` ``"zip"`` or ``"dir"``): ``key`` on ``fs``."""
    return RemoteZip(url, fs, key) if kind == "zip" else RemoteDir(url, fs, key)


def _unreached(e: BaseException) -> bool:
    """``e`` (what an fsspec "not found" came from) is a failure to reach the server at all:
    a refused or timed-out connection, not an answer saying there is nothing there."""
    if isinstance(e, FileNotFoundError) or hasattr(e, "status"):
        return False  # an HTTP answer (404, 403, ...) or a plain "no such key"
    return isinstance(e, (OSError, TimeoutError)) or type(e).__module__.startswith("aiohttp")


class RemoteZip(ByteSource):
    """A ``*.zarr.zip`` object at a URL, read in place with ranged requests.

    Opening costs a few requests: the object's size and ETag, its tail (the central
    directory), and the local headers — fetched together with the data of the small members
    between them (metadata, ``labels``, ``paths``), which are kept. See :mod:`.ranged`.
    """

    remote = True

    def __init__(self, url: str, fs: Any, key: str, state: dict[str, Any] | None = None) -> None:
        self.where, self.fs, self.key = url, fs, key
        # the process that opened it travels with it (memory:// lives in that one alone)
        origin = os.getpid() if state is None else state.get("origin")
        self.objects = RangedObjects(fs, url, origin)
        if state is None:
            try:
                info = asked_again(lambda: fs.info(key))  # 429, 5xx: asked again, as reads are
            except FileNotFoundError as e:
                cause = e.__cause__
                status = status_of(e)
                if status in RETRIED:
                    raise ServerError(
                        f"{url!r}: the server answered HTTP {status} each time it was asked "
                        "for the store's size: it failed to answer, which says nothing about "
                        "the store; try again later"
                    ) from cause
                if status in (401, 403):
                    raise PermissionError(
                        f"{url!r}: the server refused access (HTTP {status}): check the "
                        "credentials given (storage_options=...) or, for a signed URL, that it "
                        "has not expired"
                    ) from cause
                if cause is not None and _unreached(cause):
                    # fsspec's HTTP file system says "not found" for a server it could not
                    # reach at all (connection refused): that is no missing store
                    raise ServerError(
                        f"cannot reach the server of {url!r}: {type(cause).__name__}: {cause}. "
                        "Check the address and that the server is running, then try again"
                    ) from cause
                raise FileNotFoundError(
                    f"no store at {url!r} (a *.zarr.zip appears there only once its upload "
                    "is complete)"
                ) from None

            size = info.get("size")
            if not isinstance(size, int) or isinstance(size, bool):
                raise OSError(
                    f"{url}: the server does not say how big the file is (no Content-Length), "
                    "so it cannot be read in place with ranged requests"
                )
            etag = info.get("ETag")
            state = {
                "size": size,
                "etag": etag if isinstance(etag, str) else None,
                "origin": origin,
            }
            state["members"], state["spans"] = _remote_zip_members(self.objects, key, state)
        self._state = state
        self.members = state["members"]
        self.keys = {k: v[1] for k, v in self.members.items()}
        self._check = {"size": state["size"], "etag": state["etag"]}
        # small members are read from the span around them, fetched whole once
        self._span: dict[str, tuple[int, int]] = {}
        for a, n in state["spans"]:
            for k, (off, length) in self.members.items():
                if a <= off and off + length <= a + n:
                    self._span[k] = (a, n)

    def __getstate__(self) -> dict[str, Any]:
        return {"where": self.where, "fs": self.fs, "key": self.key, "state": self._state}

    def __setstate__(self, s: dict[str, Any]) -> None:
        self.__init__(s["where"], s["fs"], s["key"], s["state"])  # type: ignore[misc]

    def _fetch(self, key: str, start: int, n: int) -> memoryview:
        offset = self.members[key][0] + start
        span = self._span.get(key)
        if span is not None:
            return self.objects.read_kept(self.key, offset, n, span, **self._check)
        return self.objects.read(self.key, offset, n, **self._check)

    def _read(self, key: str, start: int, n: int) -> bytes:
        return bytes(self._fetch(key, start, n))

    def readinto(self, key: str, start: int, buffers: Sequence[Any]) -> None:
        total = sum(memoryview(b).nbytes for b in buffers)
        _check_range(self, key, start, total)
        if key in self._span:
            super().readinto(key, start, buffers)  # from the kept span
            return
        offset = self.members[key][0] + start
        self.objects.readinto(self.key, offset, buffers, **self._check)

    @contextlib.contextmanager
    def view(self, key: str, start: int, n: int, scratch: Any) -> Iterator[Any]:
        _check_range(self, key, start, n)
        if key in self._span or not self.objects.plain:
            yield self._fetch(key, start, n)  # kept, or fetched as bytes: no copy
            return
        with super().view(key, start, n, scratch) as data:  # streamed into scratch
            yield data


class RemoteDir(ByteSource):
    """A ``*.zarr`` folder of objects at a URL (listed once; small objects read whole and kept).

    Not over plain HTTP(S): a web server has no listing of a folder's objects that says
    their sizes (nginx's ``autoindex`` pages do not), so the store is refused there.
    """

    remote = True

    def __init__(self, url: str, fs: Any, key: str, state: dict[str, Any] | None = None) -> None:
        self.where, self.fs, self.key = url, fs, key
        if state is None:
            if is_http(fs):
                raise ValueError(
                    f"{url!r}: a *.zarr folder cannot be read over plain HTTP(S): HTTP has no "
                    "listing of a folder's objects and their sizes. Serve the store as one "
                    "*.zarr.zip file (daskimg reads it in place with ranged requests), or put "
                    "the folder on object storage (s3://, gs://, az://, ...)"
                )
            fs.invalidate_cache(key)
            found = fs.find(key, detail=True)
            prefix = key.rstrip("/") + "/"
            sizes = {
                k[len(prefix) :]: int(v["size"]) for k, v in found.items() if k.startswith(prefix)
            }
            if not sizes:
                raise FileNotFoundError(f"no store at {url!r}")
            state = {"sizes": sizes, "origin": os.getpid()}
        self._state = state
        self.keys = dict(state["sizes"])
        self.objects = RangedObjects(fs, url, state.get("origin"))
        self._root = key.rstrip("/")

    def __getstate__(self) -> dict[str, Any]:
        return {"where": self.where, "fs": self.fs, "key": self.key, "state": self._state}

    def __setstate__(self, s: dict[str, Any]) -> None:
        self.__init__(s["where"], s["fs"], s["key"], s["state"])  # type: ignore[misc]

    def _fetch(self, key: str, start: int, n: int) -> memoryview:
        path, size = f"{self._root}/{key}", self.keys[key]
        if size <= SMALL:
            return self.objects.read_kept(path, start, n, (0, size), size=size)
        return self.objects.read(path, start, n, size=size)

    def _read(self, key: str, start: int, n: int) -> bytes:
        return bytes(self._fetch(key, start, n))

    def readinto(self, key: str, start: int, buffers: Sequence[Any]) -> None:
        total = sum(memoryview(b).nbytes for b in buffers)
        _check_range(self, key, start, total)
        if self.keys[key] <= SMALL:
            super().readinto(key, start, buffers)  # from the kept object
            return
        path = f"{self._root}/{key}"
        self.objects.readinto(path, start, buffers, size=self.keys[key])

    @contextlib.contextmanager
    def view(self, key: str, start: int, n: int, scratch: Any) -> Iterator[Any]:
        _check_range(self, key, start, n)
        yield self._fetch(key, start, n)  # kept, or fetched as bytes: no copy


def _check_range(src: ByteSource, key: str, start: int, n: int) -> None:
    """Raise :class:`ChecksumError` unless ``key`` holds bytes ``start .. start + n``."""
    size = src.size_of(key)
    if start < 0 or n < 0 or start + n > size:
        raise ChecksumError(
            f"{src.where}: {key!r} holds {size} bytes, too few for bytes {start}..{start + n} "
            "(truncated); the store is damaged — re-create it"
        )


def _remote_zip_members(
    objects: RangedObjects, key: str, state: dict[str, Any]
) -> tuple[dict[str, tuple[int, int]], list[tuple[int, int]]]:
    """Members of a zip at a URL, and the spans of small members fetched (and kept) on the way."""
    size, check = state["size"], {"size": state["size"], "etag": state["etag"]}
    tail = min(size, ZIP_TAIL)
    tail_bytes = bytes(objects.read(key, size - tail, tail, **check))
    spans: list[tuple[int, int]] = []
    if tail and objects.keep(key, size - tail, tail_bytes):  # a small zip is then read whole
        spans.append((size - tail, tail))

    tail_start = size - tail

    def read_before_tail(fetch: list[tuple[int, int]]) -> list[memoryview]:
        # the tail is already here: what lies in it (the metadata a one-pass zip writes last)
        # is cut from it, never fetched again; only the bytes before it are requested
        need = [(a, min(n, tail_start - a)) for a, n in fetch if a < tail_start]
        fetched = dict(
            zip(need, objects.read_many(key, need, **check) if need else [], strict=True)
        )
        tail_view = memoryview(tail_bytes)
        got: list[memoryview] = []
        for a, n in fetch:
            if a >= tail_start:
                got.append(tail_view[a - tail_start : a - tail_start + n])
                continue
            head = fetched[(a, min(n, tail_start - a))]
            if a + n > tail_start:
                head = memoryview(bytes(head) + tail_bytes[: a + n - tail_start])
            got.append(head)
        return got

    def read_ranges(ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        # a member's extent runs from its local header to the next header: runs of small
        # extents are fetched whole (their data is kept), a big member's header alone
        heads = {a: min(b, size) for a, b in ranges}
        starts = sorted(heads)
        groups: list[tuple[bool, list[int]]] = []  # (small?, header starts) in file order
        for a, b in zip(starts, [*starts[1:], size], strict=True):
            small = b - a <= SMALL
            if small and groups and groups[-1][0] and b - groups[-1][1][0] <= SPAN:
                groups[-1][1].append(a)
            else:
                groups.append((small, [a]))
        fetch: list[tuple[int, int]] = []
        runs: list[tuple[int, int]] = []
        budget = KEEP - sum(n for _, n in spans)
        for small, g in groups:
            n = _extent(g, starts, size)
            if small and n <= budget:  # small members: fetched whole with their headers, kept
                runs.append((g[0], n))
                budget -= n
            else:
                fetch += [(a, heads[a] - a) for a in g]  # the headers alone
        fetch = sorted((a, n) for a, n in fetch + runs if objects.kept(key, a, n) is None)
        got = read_before_tail(fetch)
        for a, n in runs:
            i = bisect.bisect_left(fetch, (a, n))
            if i < len(fetch) and fetch[i] == (a, n) and objects.keep(key, a, bytes(got[i])):
                spans.append((a, n))
        out = []
        for a, b in ranges:
            b = min(b, size)  # a header cut off by the end of the file: zip_members says so
            data = objects.kept(key, a, b - a)
            i = bisect.bisect_right(fetch, (a, size)) - 1  # the fetch starting at or before a
            if data is None and i >= 0 and b <= fetch[i][0] + fetch[i][1]:
                data = got[i][a - fetch[i][0] : b - fetch[i][0]]
            out.append(bytes(objects.read(key, a, b - a, **check) if data is None else data))
        return out

    fh = _TailFile(objects, key, size, tail_bytes, check)
    members = zip_members(fh, size, read_ranges, objects.where)
    return members, spans


def _extent(group: list[int], starts: list[int], size: int) -> int:
    """Bytes from the first header of ``group`` to the header after its last one (or the end)."""
    i = bisect.bisect_right(starts, group[-1])
    return (starts[i] if i < len(starts) else size) - group[0]


#: the end of a zip fetched at once when it is opened: its central directory, usually whole
#: (and a zip this small is then read from memory)
ZIP_TAIL = 256 << 10


class _TailFile:
    """A read-only file over an object at a URL for :mod:`zipfile`: its tail held, the rest
    fetched on demand (zipfile reads the end record and the central directory only)."""

    def __init__(
        self, objects: RangedObjects, key: str, size: int, tail: bytes, check: dict[str, Any]
    ) -> None:
        self.objects, self.key, self.size, self.tail = objects, key, size, tail
        self.check = check
        self.pos = 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        if base + offset < 0:
            raise OSError("seek before the start of the file")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        start = min(self.pos, end)
        first_held = self.size - len(self.tail)
        if start >= first_held:
            data = self.tail[start - first_held : end - first_held]
        else:
            data = bytes(self.objects.read(self.key, start, end - start, **self.check))
        self.pos = end
        return data
