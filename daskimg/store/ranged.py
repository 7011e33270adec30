"""Store: ranged reads of the objects of a store at a URL, through fsspec.

What :class:`~daskimg.store.urlsource.RemoteZip` and
:class:`~daskimg.store.urlsource.RemoteDir` fetch with. Each read is one ranged request for
a whole chunk (or shard index) from the reading thread; the loader's threads keep several
in flight. Measured with ``bench/bench_url.py`` (nginx and moto's S3 server on loopback):

* **HTTP(S)** without client options (``headers`` are fine): each reading thread keeps its
  own keep-alive connection (the standard library's ``http.client``) and reads the
  response straight into the reader's buffer. Through fsspec's ``cat_file`` every response
  is received by fsspec's one event-loop thread, joined into a new ``bytes`` and copied
  again: ~60% more client CPU per 7.6 MB chunk, and one thread receiving for all of them
  (half the chunk rate on a busy 2-core machine). Every response is checked: ``206``
  with the ``Content-Range`` asked for and the object's size when the store was opened,
  and ``If-Match`` with its ETag — an object replaced while it is read is an error naming
  the store, never new bytes under old metadata. With other client options (auth,
  ``client_kwargs``), or once the server redirects, reads go through fsspec as for other
  protocols (their lengths checked).
* **Other protocols** (``s3://``, ``gs://``, ``memory://``, ...): ``fs.cat_file`` with a
  range; the bytes are decoded where they are (no copy into the reader's buffer).
* **Small objects and zip members** (metadata, ``labels``, ``paths``; at most
  :data:`SMALL` each) are fetched whole once and kept (at most :data:`KEEP` per store): a
  1-D column is otherwise one request per chunk plus one per shard index, and opening a
  2,000-sample ``.zarr.zip`` on moto (which copies the whole object for every ranged GET)
  took 70-85 s; now ~3 requests plus one per big member.
* Not done, because it measured slower: splitting one chunk into several concurrent
  sub-range requests (more CPU per byte on loopback; every extra request costs a whole
  object copy on moto).

The filesystem is made again in a forked child (fsspec's async filesystems refuse to be
used across ``fork``), and connections are never shared with a child, so a DataLoader
worker reads with its own.
"""

from __future__ import annotations

import errno
import http.client
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import ChecksumError, DaskImgError, ServerError
from ..remote import in_another_process

__all__ = [
    "KEEP",
    "RETRIED",
    "SMALL",
    "SPAN",
    "RangedObjects",
    "asked_again",
    "is_http",
    "status_of",
]

_T = TypeVar("_T")

#: an object (or zip member) at most this big is fetched whole on first use and kept
SMALL = 1 << 20
#: at most this many bytes are kept per store
KEEP = 64 << 20
#: small zip members next to each other are fetched in one request, up to this many bytes
SPAN = 8 << 20

#: answers that mean "ask again later" (server errors, too many requests), and the pauses
#: before asking again
RETRIED = frozenset({429, 500, 502, 503, 504})
_BACKOFF = (0.2, 1.0)
#: the longest a server's ``Retry-After`` is waited for, in seconds, per request
_LONGEST = 10.0

_REPLACED = (
    "{where}: {path!r} changed since the store was opened ({what}); it was replaced or "
    "rewritten while it was read, so what was read no longer belongs together. Open it again"
)


class RangedObjects:
    """Ranged reads of objects at a URL, through the fsspec filesystem ``fs``.

    ``where`` names the store in errors. Picklable (the filesystem pickles as its options);
    safe to use from several threads at once.
    """

    def __init__(self, fs: Any, where: str, origin: int | None = None) -> None:
        self.where = where
        self._fs = fs
        self._pid = os.getpid()
        #: the process that opened the store (memory:// objects live in it alone)
        self._origin = os.getpid() if origin is None else origin
        # HTTP(S) with no options but headers: read in the calling thread, standard library
        self.plain = is_http(fs) and _plain_options(fs)
        self._kept: dict[str, list[tuple[int, bytes]]] = {}
        self._kept_bytes = 0
        self._lock = threading.Lock()
        self._fetching: dict[tuple[str, int], threading.Lock] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"fs": self._fs, "where": self.where, "origin": self._origin}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["fs"], state["where"], state.get("origin"))  # type: ignore[misc]

    @property
    def fs(self) -> Any:
        """The filesystem, made again after ``fork`` (an async one cannot cross it)."""
        if self._pid != os.getpid():
            fs = self._fs
            self._fs = type(fs)(*fs.storage_args, **fs.storage_options)
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self._fetching = {}
        return self._fs

    # -- what is kept ----------------------------------------------------------------
    def kept(self, path: str, start: int, n: int) -> memoryview | None:
        """Bytes ``start .. start + n`` of ``path`` if a kept span holds them."""
        for at, data in self._kept.get(path, ()):
            if at <= start and start + n <= at + len(data):
                return memoryview(data)[start - at : start - at + n]
        return None

    def keep(self, path: str, start: int, data: bytes) -> bool:
        """Keep ``data`` (bytes ``start ..`` of ``path``) for later reads, if the budget allows."""
        with self._lock:
            if self._kept_bytes + len(data) > KEEP:
                return False
            self._kept.setdefault(path, []).append((start, data))
            self._kept_bytes += len(data)
        return True

    def read_kept(
        self, path: str, start: int, n: int, span: tuple[int, int], **check: Any
    ) -> memoryview:
        """Bytes ``start .. start + n`` of ``path`` from the kept ``span`` (``(offset, length)``,
        holding them), which is fetched whole on first use — once, whatever the threads."""
        got = self.kept(path, start, n)
        if got is not None:
            return got
        with self._lock:
            lock = self._fetching.setdefault((path, span[0]), threading.Lock())
        with lock:
            got = self.kept(path, start, n)
            if got is None:
                data = bytes(self.read(path, span[0], span[1], **check))
                if not self.keep(path, span[0], data):
                    return memoryview(data)[start - span[0] : start - span[0] + n]
                got = self.kept(path, start, n)
                assert got is not None
        return got

    # -- fetching --------------------------------------------------------------------
    def read(
        self, path: str, start: int, n: int, *, size: int | None = None, etag: str | None = None
    ) -> memoryview:
        """Bytes ``start .. start + n`` of ``path``, one ranged request (``n`` exactly, or an error).

        ``size`` and ``etag`` are what the object had when the store was opened (HTTP checks
        them on every response).
        """
        if n == 0:
            return memoryview(b"")
        if self.plain:
            buf = bytearray(n)
            self.readinto(path, start, [buf], size=size, etag=etag)
            return memoryview(buf)
        return memoryview(self._cat(path, start, n))

    def readinto(
        self,
        path: str,
        start: int,
        buffers: Sequence[Any],
        *,
        size: int | None = None,
        etag: str | None = None,
    ) -> None:
        """Fill ``buffers`` (writable, in order) with the bytes of ``path`` from ``start``."""
        views = [memoryview(b).cast("B") for b in buffers]
        n = sum(len(v) for v in views)
        if n == 0:
            return
        if self.plain:
            if self._plain_into(self.fs, path, start, views, n, size, etag):
                return
            self.plain = False  # redirected: fsspec (aiohttp) follows, from now on
        data = self._cat(path, start, n)
        pos = 0
        for v in views:
            v[:] = data[pos : pos + len(v)]
            pos += len(v)

    def read_many(
        self, path: str, ranges: Sequence[tuple[int, int]], **check: Any
    ) -> list[memoryview]:
        """Several ``(start, length)`` ranges of ``path``, fetched concurrently."""
        if not ranges:
            return []
        got: list[Any] = [None] * len(ranges)
        todo, busy = list(range(len(ranges))), 0
        while todo:  # ranges a server refused (429, 5xx) are asked again, as one at a time
            answers = self.fs.cat_ranges(
                [path] * len(todo),
                [ranges[i][0] for i in todo],
                [ranges[i][0] + ranges[i][1] for i in todo],
            )
            for i, data in zip(todo, answers, strict=True):
                got[i] = data
            refused = [i for i in todo if _status(got[i]) in RETRIED]
            todo = refused if refused and _pause(busy, _headers(got[refused[0]])) else []
            busy += 1
        out = []
        for (a, n), data in zip(ranges, got, strict=True):
            if isinstance(data, BaseException):
                raise self._error(path, a, n, data) from data
            out.append(memoryview(self._exact(path, a, n, data)))
        return out

    def _cat(self, path: str, start: int, n: int) -> bytes:
        busy = 0
        while True:
            try:
                data = self.fs.cat_file(path, start=start, end=start + n)
                break
            except Exception as e:
                if _status(e) in RETRIED and _pause(busy, _headers(e)):
                    busy += 1  # asked again after a pause, as on the plain path
                    continue
                if isinstance(e, FileNotFoundError) or _status(e) in RETRIED:
                    raise self._error(path, start, n, e) from None
                # another library's own error (botocore's, aiohttp's cut payload, a read
                # timeout): said with the store and the bytes, the cause kept, and as a
                # failure to reach the server, not as damage (verify would list it so)
                raise self._unreached(path, start, n, e) from e
        return self._exact(path, start, n, data)

    def _unreached(self, path: str, start: int, n: int, e: BaseException) -> ServerError:
        """A read the server did not answer (refused, cut, timed out, refused access)."""
        return ServerError(
            f"{self.where}: reading {path!r} (bytes {start}-{start + n - 1}) failed: "
            f"{type(e).__name__}: {e}. The server did not answer as asked (the network, "
            "credentials, a timeout), which says nothing about the stored bytes; check "
            "access and try again"
        )

    def _exact(self, path: str, start: int, n: int, data: Any) -> Any:
        if len(data) != n:
            raise ChecksumError(
                f"{self.where}: {path!r} bytes {start}..{start + n} came back as {len(data)} "
                "bytes (the object is shorter than when the store was opened: truncated or "
                "replaced); open the store again, or re-create it"
            )
        return data

    def _error(self, path: str, start: int, n: int, e: BaseException) -> Exception:
        if isinstance(e, FileNotFoundError):
            elsewhere = in_another_process(self.where, self._origin)
            if elsewhere is not None:  # not replaced: never here
                return elsewhere
            return ChecksumError(_REPLACED.format(where=self.where, path=path, what="it is gone"))
        status = _status(e)
        if status in RETRIED:  # through fsspec (after a redirect), as on the plain path
            return self._server_error(path, start, n, status, getattr(e, "message", ""))
        return OSError(f"{self.where}: reading {path!r} bytes {start}..{start + n} failed: {e}")

    def _plain_into(
        self,
        fs: Any,
        path: str,
        start: int,
        views: list[memoryview],
        n: int,
        size: int | None,
        etag: str | None,
    ) -> bool:
        """One ranged GET on this thread's keep-alive connection, read straight into ``views``.

        False (nothing read) when the server redirects: the caller then reads through fsspec,
        which follows redirects.
        """
        url = urllib.parse.urlsplit(str(fs.encode_url(path)) if hasattr(fs, "encode_url") else path)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        headers = {k: str(v) for k, v in (fs.kwargs.get("headers") or {}).items()}
        headers["Range"] = f"bytes={start}-{start + n - 1}"
        headers.setdefault("Accept-Encoding", "identity")
        if etag and not etag.startswith("W/"):
            headers["If-Match"] = etag
        dropped = busy = cut = 0
        while True:
            conn = _CONNECTIONS.get(url)
            try:
                conn.request("GET", target, headers=headers)
                r = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                _CONNECTIONS.drop(url)  # a keep-alive connection the server had closed
                dropped += 1
                if dropped == 2:
                    raise self._unreached(path, start, n, e) from e
                continue
            except (OSError, http.client.HTTPException) as e:  # refused, unreachable, timed out
                _CONNECTIONS.drop(url)
                raise self._unreached(path, start, n, e) from e
            if r.status in RETRIED:
                # a server error or "too many requests": the bytes are not in question;
                # asked again after a pause
                r.read()
                if _pause(busy, r.headers):
                    busy += 1
                    continue
            try:
                if r.status in (301, 302, 303, 307, 308):
                    r.read()
                    return False
                self._check_response(r, path, start, n, size)
            except BaseException:
                _CONNECTIONS.drop(url)  # what is left on the connection is unknown
                raise
            try:
                self._read_body(r, path, start, n, views)
            except DaskImgError:
                _CONNECTIONS.drop(url)
                raise
            except (OSError, http.client.HTTPException) as e:
                # the connection cut mid-answer (reset by a proxy, timed out): the bytes are
                # not in question; asked once more on a new connection, then said so
                _CONNECTIONS.drop(url)
                cut += 1
                if cut == 2:
                    raise self._unreached(path, start, n, e) from e
                continue
            except BaseException:
                _CONNECTIONS.drop(url)
                raise
            return True

    def _read_body(self, r: Any, path: str, start: int, n: int, views: list[memoryview]) -> None:
        """Read a checked 206 answer ``r`` into ``views``: exactly ``n`` bytes, or an error."""
        for v in views:
            got = 0
            while got < len(v):
                k = r.readinto(v[got:])
                if not k:
                    # the connection closed before the length the answer gave (http.client
                    # reads that as an end): cut on the way, as by a reset; a store replaced
                    # meanwhile answers otherwise when asked again (its ETag, its size)
                    raise http.client.IncompleteRead(bytes(v[:got]), len(v) - got)
                got += k
        if r.read(1):
            raise ServerError(f"{self.where}: {path!r}: the server sent more than was asked")

    def _check_response(self, r: Any, path: str, start: int, n: int, size: int | None) -> None:
        status = r.status
        if status == 412:
            raise ChecksumError(
                _REPLACED.format(where=self.where, path=path, what="its ETag no longer matches")
            )
        if status in (404, 410):
            raise ChecksumError(_REPLACED.format(where=self.where, path=path, what="it is gone"))
        if status == 416:
            raise ChecksumError(_REPLACED.format(where=self.where, path=path, what="it is shorter"))
        whole = status == 200 and start == 0 and size == n  # a range of all of it may be 200
        if whole and r.headers.get("Content-Length") == str(n):
            return
        if status in RETRIED:
            raise self._server_error(path, start, n, status, r.reason)
        if status != 206:  # the server's, not the store's (no cloud credentials to check)
            raise ServerError(
                f"{self.where}: a ranged GET of {path!r} (bytes {start}..{start + n}) got HTTP "
                f"{status}, not 206 Partial Content; daskimg reads a store at a URL with ranged "
                "requests only — serve it from a server that supports them (nginx, S3, ...)"
            )
        want = f"bytes {start}-{start + n - 1}/"
        got = r.headers.get("Content-Range", "")
        total = got[len(want) :] if got.startswith(want) else None
        if total is None or (size is not None and total not in ("*", str(size))):
            raise ChecksumError(
                _REPLACED.format(
                    where=self.where,
                    path=path,
                    what=f"asked for {want}{size}, the server sent {got or 'no Content-Range'}",
                )
            )

    def _server_error(
        self, path: str, start: int, n: int, status: int, reason: str | None
    ) -> ServerError:
        return ServerError(
            f"{self.where}: a ranged GET of {path!r} (bytes {start}-{start + n - 1}) got "
            f"HTTP {status} ({reason or 'server error'}) {1 + len(_BACKOFF)} times: the "
            "server failed to answer, which says nothing about the stored bytes; try again "
            "later"
        )


def asked_again(call: Callable[[], _T]) -> _T:
    """``call()``, asked again after a pause while it fails with a server's "ask again
    later" (429, 5xx: :func:`status_of`), as a ranged read is; the last failure raised."""
    busy = 0
    while True:
        try:
            return call()
        except Exception as e:
            if status_of(e) not in RETRIED or not _pause(busy, _headers(e.__cause__ or e)):
                raise
            busy += 1


def status_of(e: BaseException | None) -> int | None:
    """The HTTP status of an fsspec error, or of the error fsspec's "not found" wraps (its
    HTTP file system raises ``FileNotFoundError`` for every failed answer), or None."""
    if e is None:
        return None
    status = _status(e)
    if status is None and isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        status = _status(e.__cause__)
    return status


def _pause(busy: int, headers: Any) -> bool:
    """Wait before asking again after the ``busy``-th refusal (429 or 5xx): the server's
    ``Retry-After`` in seconds when it gives one (at most :data:`_LONGEST`), else the next
    of :data:`_BACKOFF`. False (no wait) once every pause is used."""
    if busy >= len(_BACKOFF):
        return False
    wait = _BACKOFF[busy]
    after = (headers or {}).get("Retry-After", "") if hasattr(headers, "get") else ""
    if str(after).strip().isdigit():
        wait = max(wait, min(float(after), _LONGEST))
    _sleep(wait)
    return True


_sleep = time.sleep  # what _pause waits with (a test counts the waits instead)


def _headers(e: BaseException) -> Any:
    """The response headers an fsspec error carries (aiohttp's ``ClientResponseError``)."""
    return getattr(e, "headers", None)


def _status(e: BaseException) -> int | None:
    """The HTTP status an fsspec error carries (aiohttp's ``ClientResponseError.status``)."""
    status = getattr(e, "status", None)
    if isinstance(e, OSError) and getattr(e, "errno", None) == errno.EREMOTEIO:
        return 500  # s3fs's spelling of a server error (HTTP 5xx): asked again, then said so
    return status if isinstance(status, int) else None


def is_http(fs: Any) -> bool:
    """True for fsspec's HTTP(S) filesystem (which cannot list the objects of a folder)."""
    protocol = getattr(fs, "protocol", ())
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return bool({"http", "https"} & set(protocols))


def _plain_options(fs: Any) -> bool:
    """No options the standard library's client would not honour (auth, proxies, SSL, ...)."""
    kwargs = dict(getattr(fs, "kwargs", None) or {})
    headers = kwargs.pop("headers", None)
    return (
        not kwargs and not getattr(fs, "client_kwargs", None) and isinstance(headers, dict | None)
    )


class _Connections(threading.local):
    """Keep-alive HTTP(S) connections of this thread (none shared across ``fork``)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.conns: dict[tuple[str, str, int | None], http.client.HTTPConnection] = {}

    def get(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        if self.pid != os.getpid():  # a forked child: the parent's sockets are not ours
            self.pid, self.conns = os.getpid(), {}
        key = (url.scheme, url.hostname or "", url.port)
        conn = self.conns.get(key)
        if conn is None:
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(
                    key[1], url.port, timeout=_TIMEOUT, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(key[1], url.port, timeout=_TIMEOUT)
            self.conns[key] = conn
        return conn

    def drop(self, url: urllib.parse.SplitResult) -> None:
        conn = self.conns.pop((url.scheme, url.hostname or "", url.port), None)
        if conn is not None and self.pid == os.getpid():
            conn.close()


_CONNECTIONS = _Connections()
#: seconds a connection waits on the server (aiohttp's default total timeout)
_TIMEOUT = 300
