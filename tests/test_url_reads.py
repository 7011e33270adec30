"""Stores at a URL read in place: a ``.zarr.zip`` over HTTP ranged requests, and ``memory://``.

The HTTP server is a small range-capable server started here on 127.0.0.1 (ETags,
``If-Match``, and misbehaviour on request: ignoring ``Range``); every request it answers is
recorded, so the tests can count what opening and reading a store costs.
"""

from __future__ import annotations

import http.server
import itertools
import multiprocessing
import pickle
import re
import socket
import struct
import sys
import threading
import zlib

import dask
import fsspec
import numpy as np
import pytest

import daskimg as di
from daskimg.errors import ChecksumError, ServerError
from daskimg.store.reader import StoreReader

pytest.importorskip("aiohttp")  # fsspec's HTTP filesystem


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server

    def log_message(self, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.command, self.path, rng))
        srv.headers_seen.append(dict(self.headers))
        if srv.fail_all > 0:  # every answer an error, the size asked for (HEAD) too
            srv.fail_all -= 1
            self._send(srv.fail_status, b"", {"Retry-After": "0"})
            return
        if rng and srv.fail_ranged > 0:  # a server error, as a busy server gives
            srv.fail_ranged -= 1
            after = {} if srv.retry_after is None else {"Retry-After": srv.retry_after}
            self._send(srv.fail_status, b"", after)
            return
        if self.path in srv.redirects:
            self._send(302, b"", {"Location": srv.redirects[self.path]})
            return
        data = srv.files.get(self.path)
        if data is None:
            self._send(404, b"", {})
            return
        etag = f'"{zlib.crc32(data):08x}-{len(data)}"'
        headers = {"Accept-Ranges": srv.accept_ranges}
        if srv.etags:
            headers["ETag"] = etag
            match = self.headers.get("If-Match")
            if match is not None and match != etag:
                self._send(412, b"", {})
                return
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m is None or srv.ignore_range:
            self._send(200, data, headers, body=body)
            return
        a = int(m[1])
        b = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
        if a >= len(data):
            self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            return
        headers["Content-Range"] = f"bytes {a}-{b}/{len(data)}"
        if body and srv.half_ranged > 0:  # the connection closed (cleanly) mid-answer
            srv.half_ranged -= 1
            self._send(206, data[a : b + 1], headers, body=False)
            self.wfile.write(data[a : a + (b + 1 - a) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if body and srv.cut_ranged > 0:  # a proxy resets the connection mid-answer
            srv.cut_ranged -= 1
            self._send(206, data[a : b + 1], headers, body=False)
            self.wfile.write(data[a : a + 10])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()  # SO_LINGER 0: a reset, not a clean close
            return
        self._send(206, data[a : b + 1], headers, body=body)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool = True) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that went away
            super().handle_error(request, client_address)


@pytest.fixture
def server():
    """A range-capable HTTP server on 127.0.0.1: ``files`` maps URL paths to bytes."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.headers_seen, srv.redirects = {}, [], [], {}
    srv.etags, srv.ignore_range, srv.fail_ranged, srv.accept_ranges = True, False, 0, "bytes"
    srv.fail_status, srv.retry_after, srv.fail_all, srv.cut_ranged = 500, None, 0, 0
    srv.half_ranged = 0
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _store(tmp_path, ds, name="s.zarr.zip", **kw):
    path = tmp_path / name
    kw = {"chunks": 8, "shard_chunks": 2, **kw}
    di.to_zarr(ds, path, order="source", **kw)
    return path


def _serve(server, path, name="/s.zarr.zip"):
    server.files[name] = path.read_bytes()
    return server.base + name


@pytest.fixture
def small_is_tiny(monkeypatch):
    """Members over 8,000 bytes are big (read by range, not kept), as images shards are; only
    the last 2,000 bytes of a zip are fetched at once when it is opened."""
    import daskimg.store.ranged as ranged
    import daskimg.store.urlsource as urlsource

    monkeypatch.setattr(urlsource, "SMALL", 8000)
    monkeypatch.setattr(ranged, "SMALL", 8000)
    monkeypatch.setattr(urlsource, "ZIP_TAIL", 2000)


@pytest.fixture
def noisy_set():
    """64 incompressible 32x32x3 images (12 KB a chunk of 4) whose first pixel is the index."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(64)
    return di.ImageSet(images, np.arange(64) % 3, classes=["a", "b", "c"])


@pytest.mark.parametrize("codec", ["lz4", "jpeg", "none"])
def test_http_zip_reads_as_local(tmp_path, server, indexed_set, codec):
    ds = indexed_set
    if codec == "jpeg":  # JPEG needs 1 or 3 channels of some size; compare with the local read
        ds = di.ImageSet(np.repeat(np.repeat(ds.images, 4, 1), 4, 2), ds.labels, classes=ds.classes)
    path = _store(tmp_path, ds, codec=codec)
    url = _serve(server, path)
    remote, local = di.open_zarr(url, storage_options={}), di.open_zarr(path)
    np.testing.assert_array_equal(remote.images.compute(), local.images.compute())
    np.testing.assert_array_equal(remote.labels, local.labels)
    for a, b in zip(
        di.BatchIterator(url, batch_size=16, seed=3, storage_options={}),
        di.BatchIterator(path, batch_size=16, seed=3),
        strict=True,
    ):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_http_zip_at_a_signed_url_reads_as_local(tmp_path, server, noisy_set, small_is_tiny):
    # a presigned URL (S3's, GCS's) carries its signature in the query: "must end in
    # '.zarr.zip'" refused it before any request. Every read must carry the query (the
    # server answers nothing without it)
    from daskimg.storeinfo import verify

    signed = "/s.zarr.zip?X-Amz-Signature=abc%2Fd&X-Amz-Expires=60"
    url = _serve(server, _store(tmp_path, noisy_set), signed)
    ds = di.open_zarr(url)
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
    np.testing.assert_array_equal(ds.labels, noisy_set.labels)
    seen = np.concatenate([b[0][:, 0, 0, 0] for b in di.BatchIterator(url, batch_size=16)])
    assert sorted(seen.tolist()) == list(range(64))
    assert verify(url) == []
    assert {path for _, path, _ in server.requests} == {signed}
    with pytest.raises(ValueError, match=r"a signed URL .* names one object"):
        di.open_zarr(server.base + "/s.zarr?sig=abc")
    # its path quoted as fsspec quotes one without a query (a raw space went out raw: 400)
    server.files["/my%20data/s%C3%A9.zarr.zip?sig=1"] = server.files[signed]
    again = di.open_zarr(server.base + "/my data/sé.zarr.zip?sig=1")
    np.testing.assert_array_equal(again.images.compute(), noisy_set.images)


@pytest.mark.parametrize(
    "options",
    [{"headers": {"X-Token": "t0"}}, {"client_kwargs": {"trust_env": False}}],
    ids=["headers", "client-options"],
)
def test_http_zip_with_options(tmp_path, server, noisy_set, small_is_tiny, options):
    # headers are sent on every request; other client options go through fsspec's session
    url = _serve(server, _store(tmp_path, noisy_set))
    ds = di.open_zarr(url, storage_options=options)
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
    ranged = [h for (_, _, r), h in zip(server.requests, server.headers_seen, strict=True) if r]
    assert len(ranged) > 8
    if "headers" in options:
        assert all(h.get("X-Token") == "t0" for h in ranged)


def test_http_zip_behind_a_redirect(tmp_path, server, noisy_set, small_is_tiny):
    _serve(server, _store(tmp_path, noisy_set))
    server.redirects["/moved.zarr.zip"] = "/s.zarr.zip"
    ds = di.open_zarr(server.base + "/moved.zarr.zip", storage_options={})
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
    assert any(p == "/moved.zarr.zip" and r for _, p, r in server.requests)


def test_http_zip_open_takes_few_requests(tmp_path, server, noisy_set, small_is_tiny):
    path = _store(tmp_path, noisy_set, chunks=4, shard_chunks=4)
    url = _serve(server, path)
    ds = di.open_zarr(url, storage_options={})
    np.testing.assert_array_equal(ds.labels, noisy_set.labels)
    reader = StoreReader(str(path))
    lay = reader.layout("images")
    assert min(reader.source.keys[lay.key(s)] for s in range(lay.num_shards)) > 8000
    # size, tail (central directory), the local header of each images shard, and the small
    # members (the 1-D columns' shards, the metadata) with their headers in one run, not one
    # per chunk: the one-pass zip writes them all last, just before the central directory,
    # so only what the tail does not hold is fetched
    assert len(server.requests) == 3 + lay.num_shards, server.requests
    assert [r[0] for r in server.requests].count("HEAD") == 1
    spans = sorted(
        (int(m[1]), int(m[2]))
        for m in (re.match(r"bytes=(\d+)-(\d+)", r[2] or "") for r in server.requests)
        if m
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start > end, f"bytes fetched twice on open: {spans}"
    before = len(server.requests)
    images = ds.images.compute(scheduler="sync")  # threads may each read a shard's index
    np.testing.assert_array_equal(images, noisy_set.images)
    # then one index per shard and one request per chunk, each a range of the one object
    got = server.requests[before:]
    assert len(got) == lay.num_shards + lay.num_chunks
    sizes = sorted(
        int(m[2]) - int(m[1]) + 1 for m in (re.match(r"bytes=(\d+)-(\d+)", r[2]) for r in got)
    )
    chunks = sorted(reader.chunk_location("images", c)[2] for c in range(lay.num_chunks))
    assert sizes[-lay.num_chunks :] == chunks


def test_http_zip_keeps_at_most_keep_bytes(tmp_path, server, noisy_set, monkeypatch):
    import daskimg.store.ranged as ranged
    import daskimg.store.urlsource as urlsource

    monkeypatch.setattr(urlsource, "ZIP_TAIL", 2000)
    monkeypatch.setattr(urlsource, "KEEP", 50_000)
    monkeypatch.setattr(ranged, "KEEP", 50_000)
    path = _store(tmp_path, noisy_set)  # ~200 KB of small members
    url = _serve(server, path)
    ds = di.open_zarr(url, storage_options={})
    spans = [re.match(r"bytes=(\d+)-(\d+)", r[2]) for r in server.requests[1:]]
    fetched = sum(int(m[2]) - int(m[1]) + 1 for m in spans)
    assert fetched < 50_000 + 2000 + 100 * len(ds.store.reader.source.keys)
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)


def test_http_zip_small_store_is_kept_whole(tmp_path, server, indexed_set):
    path = _store(tmp_path, indexed_set)  # every member is small: one request holds them all
    url = _serve(server, path)
    ds = di.open_zarr(url, storage_options={})
    n = len(server.requests)
    ds.images.compute()
    assert len(server.requests) == n  # read from what opening fetched


def test_http_zip_replaced_while_read(tmp_path, server, noisy_set, small_is_tiny):
    path = _store(tmp_path, noisy_set)
    url = _serve(server, path)
    ds = di.open_zarr(url, storage_options={})
    ds.images.blocks[0].compute()
    other = noisy_set.take(np.arange(len(noisy_set))[::-1])
    server.files["/s.zarr.zip"] = _store(tmp_path, other, "t.zarr.zip").read_bytes()
    with pytest.raises(ChecksumError, match=r"s\.zarr\.zip.*changed since the store was opened"):
        ds.images.compute()


def test_http_zip_replaced_without_etags_size_changed(tmp_path, server, noisy_set, small_is_tiny):
    server.etags = False
    path = _store(tmp_path, noisy_set)
    url = _serve(server, path)
    ds = di.open_zarr(url, storage_options={})
    server.files["/s.zarr.zip"] += b"\0" * 10
    with pytest.raises(ChecksumError, match="changed since the store was opened"):
        ds.images.compute()


@pytest.mark.parametrize("says", ["bytes", "none"])
def test_http_server_ignoring_ranges_is_refused(tmp_path, server, noisy_set, small_is_tiny, says):
    server.ignore_range = True
    server.accept_ranges = says
    url = _serve(server, _store(tmp_path, noisy_set))
    with pytest.raises(ServerError, match="not 206 Partial Content") as got:
        di.open_zarr(url, storage_options={})
    # the server's doing: no hint at cloud credentials, which have nothing to do with it
    assert "credentials" not in " ".join(getattr(got.value, "__notes__", []))


def test_http_small_zip_from_a_server_ignoring_ranges(tmp_path, server, indexed_set):
    server.ignore_range = True  # the whole file is asked for at once: a 200 is the answer
    url = _serve(server, _store(tmp_path, indexed_set))
    np.testing.assert_array_equal(di.open_zarr(url, storage_options={}).images, indexed_set.images)


@pytest.mark.parametrize("says", ["bytes", "none"])
def test_verify_of_a_small_zip_from_a_server_ignoring_ranges_is_no_damage(
    tmp_path, server, indexed_set, capsys, caplog, says
):
    # every reader read it, but verify's plain-zarr check (through fsspec, which needs
    # ranges) failed, and verify printed DAMAGED, exit 1: a user could delete a good store.
    # A server that says so (Accept-Ranges: none) had fsspec fail in other words, and
    # verify said DAMAGED again
    from daskimg.cli import main

    server.ignore_range = True
    server.accept_ranges = says
    path = _store(tmp_path, indexed_set)
    url = _serve(server, path)
    assert main(["verify", str(path)]) == 0  # the oracle: the same bytes, local
    capsys.readouterr()
    assert main(["verify", url]) == 0
    out = capsys.readouterr().out
    assert "DAMAGED" not in out and "every chunk present" in out
    assert "does not answer Range requests" in caplog.text
    # damage is still damage there
    data = bytearray(path.read_bytes())
    _, offset, nbytes = StoreReader(str(path)).chunk_location("images", 1)
    data[offset + nbytes // 2] ^= 0x40
    server.files["/s.zarr.zip"] = bytes(data)
    assert main(["verify", url]) == 1


def test_http_damaged_chunk_is_named(tmp_path, server, noisy_set, small_is_tiny):
    path = _store(tmp_path, noisy_set)
    _, offset, nbytes = StoreReader(str(path)).chunk_location("images", 3)
    data = bytearray(path.read_bytes())
    data[offset + nbytes // 2] ^= 0x40
    server.files["/s.zarr.zip"] = bytes(data)
    ds = di.open_zarr(server.base + "/s.zarr.zip", storage_options={})
    with pytest.raises(ChecksumError, match=r"array 'images', chunk 3"):
        ds.images.compute()


def test_http_missing_store(server):
    with pytest.raises(FileNotFoundError, match="no store"):
        di.open_zarr(server.base + "/nothing.zarr.zip", storage_options={})


def test_http_folder_store_is_refused(tmp_path, server, indexed_set):
    path = _store(tmp_path, indexed_set, "s.zarr")
    for f in path.rglob("*"):
        if f.is_file():
            server.files["/s.zarr/" + f.relative_to(path).as_posix()] = f.read_bytes()
    with pytest.raises(ValueError, match=r"cannot be read over plain HTTP.*\.zarr\.zip"):
        di.open_zarr(server.base + "/s.zarr", storage_options={})


def _child_read(reader, queue):
    queue.put(int(reader.read_chunk("images", 2).sum()))


def test_http_reader_after_fork_and_pickle(tmp_path, server, noisy_set, small_is_tiny):
    url = _serve(server, _store(tmp_path, noisy_set))
    reader = di.open_zarr(url, storage_options={}).store.reader
    want = int(reader.read_chunk("images", 2).sum())  # the parent's session is in use
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_read, args=(reader, queue))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert queue.get(timeout=5) == want
    again = pickle.loads(pickle.dumps(reader))
    assert int(again.read_chunk("images", 2).sum()) == want


@pytest.mark.parametrize("name", ["s.zarr.zip", "s.zarr"])
def test_memory_store_small_objects_read_once(tmp_path, indexed_set, name, monkeypatch):
    fs = fsspec.filesystem("memory")
    path = _store(tmp_path, indexed_set, name)
    url = f"memory://urlreads/{name}"
    fs.rm("/urlreads", recursive=True) if fs.exists("/urlreads") else None
    fs.put(str(path), f"/urlreads/{name}", recursive=True)
    calls = []
    cat_file = fs.cat_file

    def counting(p, start=None, end=None, **kw):
        calls.append((p, start, end))
        return cat_file(p, start=start, end=end, **kw)

    monkeypatch.setattr(fs, "cat_file", counting)
    ds = di.open_zarr(url, storage_options={})
    np.testing.assert_array_equal(ds.labels, indexed_set.labels)
    np.testing.assert_array_equal(ds.images.compute(), indexed_set.images)
    assert len(calls) == len(set(calls))  # nothing fetched twice
    if name.endswith(".zarr"):
        # labels and paths: each shard object fetched whole, once (not an index + a chunk each)
        shards = StoreReader(str(path)).layout("labels").num_shards
        assert sum("labels/c/" in p for p, _, _ in calls) == shards
        assert all(s in (None, 0) for p, s, _ in calls if "labels/c/" in p)


def test_memory_folder_object_gone_after_open(tmp_path, noisy_set, small_is_tiny):
    fs = fsspec.filesystem("memory")
    path = _store(tmp_path, noisy_set, "g.zarr")
    fs.put(str(path), "/urlreads-gone/g.zarr", recursive=True)
    ds = di.open_zarr("memory://urlreads-gone/g.zarr", storage_options={})
    fs.rm("/urlreads-gone/g.zarr/images/c/1/0/0/0")
    with pytest.raises(ChecksumError, match=r"g\.zarr.*images/c/1/0/0/0.*(gone|missing)"):
        ds.images.compute()


def test_memory_folder_feed_fetches_each_index_once(
    tmp_path, noisy_set, small_is_tiny, monkeypatch
):
    """A URL feed reads with many threads at once: every shard index is still fetched once,
    and every sample arrives once with its own pixels."""
    import time

    fs = fsspec.filesystem("memory")
    path = _store(tmp_path, noisy_set, "f.zarr")
    fs.rm("/urlreads-feed", recursive=True) if fs.exists("/urlreads-feed") else None
    fs.put(str(path), "/urlreads-feed/f.zarr", recursive=True)
    calls = []
    cat_file = fs.cat_file

    def slow(p, start=None, end=None, **kw):
        calls.append((p, start, end))
        time.sleep(0.01)  # a network: threads overlap on the same shard
        return cat_file(p, start=start, end=end, **kw)

    monkeypatch.setattr(fs, "cat_file", slow)
    it = di.BatchIterator(
        "memory://urlreads-feed/f.zarr",
        batch_size=8,
        arrays=("images", "index"),
        storage_options={},
        seed=3,
    )
    seen = []
    for images, index in it:
        np.testing.assert_array_equal(images, noisy_set.images[index])
        seen.extend(index.tolist())
    it.close()
    assert sorted(seen) == list(range(64))
    shards = StoreReader(str(path)).layout("images").num_shards
    index_reads = [c for c in calls if "images/c/" in c[0] and c[1] is not None and c[1] != 0]
    # one ranged read of each shard's index, however many threads asked for it
    assert len({c[0] for c in index_reads}) == shards
    assert len(calls) == len(set(calls))


def test_writing_to_an_http_url_is_refused_before_anything_is_sent():
    ds = di.ImageSet(np.zeros((4, 8, 8, 3), np.uint8))
    for url in ("http://127.0.0.1:9/x.zarr.zip", "https://127.0.0.1:9/x.zarr"):
        with pytest.raises(ValueError, match="does not write stores to http"):
            di.to_zarr(ds, url)
    with pytest.raises(ValueError, match="does not write stores to http"):
        di.ArrayWriter("http://127.0.0.1:9/f.zarr.zip", name="f", shape=(2,), dtype="float32")


def test_a_server_error_is_asked_again_then_named_not_called_damage(
    tmp_path, server, noisy_set, small_is_tiny, monkeypatch
):
    import daskimg.store.ranged as ranged
    from daskimg.errors import ServerError
    from daskimg.storeinfo import verify

    monkeypatch.setattr(ranged, "_BACKOFF", (0.0, 0.0))
    url = _serve(server, _store(tmp_path, noisy_set))
    server.fail_ranged = 2  # opening too (its several ranges in one call) is asked again
    ds = di.open_zarr(url, storage_options={})
    assert server.fail_ranged == 0
    server.fail_ranged = 2  # two 500s in a row: asked again, read as served
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
    assert server.fail_ranged == 0
    server.fail_ranged = 10**6  # the server keeps failing
    with pytest.raises(ServerError, match=r"HTTP 500 .*3 times.*says nothing about the stored"):
        ds.images.compute()
    with pytest.raises(ServerError):
        verify(url, storage_options={})  # not a list of "damaged" chunks


def test_a_server_error_behind_a_redirect_is_named_as_on_the_plain_path(
    tmp_path, server, noisy_set, small_is_tiny
):
    # after a redirect the reads go through fsspec (aiohttp), which raised its own error
    from daskimg.errors import ServerError

    _serve(server, _store(tmp_path, noisy_set))
    server.redirects["/moved.zarr.zip"] = "/s.zarr.zip"
    ds = di.open_zarr(server.base + "/moved.zarr.zip", storage_options={})
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)  # now on fsspec
    server.fail_ranged = 2  # two 500s in a row: asked again, as on the plain path
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
    assert server.fail_ranged == 0
    server.fail_ranged = 10**6
    with pytest.raises(ServerError, match=r"HTTP 500 .*3 times.*says nothing about the stored"):
        ds.images.compute()


@pytest.mark.parametrize("redirected", [False, True])
def test_a_server_s_retry_after_is_waited_for_up_to_a_limit(
    tmp_path, server, noisy_set, small_is_tiny, monkeypatch, redirected
):
    import daskimg.store.ranged as ranged

    waits = []
    monkeypatch.setattr(ranged, "_sleep", waits.append)  # the waits asked for, not slept
    _serve(server, _store(tmp_path, noisy_set))
    url = server.base + "/s.zarr.zip"
    if redirected:
        server.redirects["/moved.zarr.zip"] = "/s.zarr.zip"
        url = server.base + "/moved.zarr.zip"
    ds = di.open_zarr(url, storage_options={})
    with dask.config.set(scheduler="sync"):
        np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
        server.fail_status, server.retry_after = 503, "7"
        server.fail_ranged = 1
        waits.clear()
        np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
        assert waits == [7.0]  # the server's, not the first backoff of 0.2 s
        server.fail_status, server.retry_after = 429, "3600"
        server.fail_ranged = 2
        waits.clear()
        np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
        assert waits == [ranged._LONGEST, ranged._LONGEST]  # never an hour per request


def test_several_ranges_in_one_call_are_asked_again_after_a_server_error(monkeypatch):
    # read_many (how a zip's small members are fetched when a store is opened) made one
    # request and raised at once, while its message said the server was asked 3 times
    import daskimg.store.ranged as ranged
    from daskimg.errors import ServerError

    class Busy(Exception):
        status = 503

        def __init__(self) -> None:
            super().__init__("busy")
            self.headers = {"Retry-After": "2"}  # as aiohttp's ClientResponseError carries

    data = bytes(range(256)) * 4

    class Fs:  # a filesystem that refuses the first `busy` calls of each range
        def __init__(self, busy):
            self.busy, self.calls = busy, 0

        def cat_ranges(self, paths, starts, ends):
            self.calls += 1
            return [
                Busy() if self.calls <= self.busy else data[a:b]
                for a, b in zip(starts, ends, strict=True)
            ]

    waits = []
    monkeypatch.setattr(ranged, "_sleep", waits.append)
    ranges = [(0, 10), (100, 50), (1000, 24)]
    got = ranged.RangedObjects(Fs(busy=2), "s").read_many("k", ranges)
    assert [bytes(g) for g in got] == [data[a : a + n] for a, n in ranges]  # oracle: the bytes
    assert waits == [2.0, 2.0]  # the server's Retry-After
    with pytest.raises(ServerError, match=r"HTTP 503 .*3 times"):
        ranged.RangedObjects(Fs(busy=3), "s").read_many("k", ranges)


def test_object_storage_errors_mid_read_are_named_with_the_store(
    tmp_path, noisy_set, small_is_tiny, monkeypatch
):
    # s3fs says a server error (HTTP 5xx) as OSError(EREMOTEIO, "Internal Server Error"):
    # it came bare, never asked again nor said as a ServerError; other libraries' errors
    # (aiohttp's cut payload, botocore's) came bare too, naming no store
    import errno

    from daskimg.errors import ServerError
    from daskimg.store import ranged

    fs = fsspec.filesystem("memory")
    path = _store(tmp_path, noisy_set, "e.zarr")
    fs.put(str(path), "/urlreads-err/e.zarr", recursive=True)
    ds = di.open_zarr("memory://urlreads-err/e.zarr", storage_options={})
    waits = []
    monkeypatch.setattr(ranged, "_sleep", waits.append)
    failure: list[BaseException] = [OSError(errno.EREMOTEIO, "Internal Server Error")]

    def failing(p, start=None, end=None, **kw):
        raise failure[0]

    monkeypatch.setattr(fs, "cat_file", failing)
    with pytest.raises(ServerError, match=r"e\.zarr"):
        ds.images.compute()
    assert waits  # asked again after pauses first
    failure[0] = RuntimeError("Response payload is not completed")
    with pytest.raises(ServerError, match=r"e\.zarr.*failed: RuntimeError: Response payload"):
        ds.images.compute()


def test_an_http_server_gone_mid_read_or_never_there_is_named_as_unreachable(
    tmp_path, server, noisy_set, small_is_tiny
):
    # a server stopped mid-read gave a bare ConnectionRefusedError naming no store; one never
    # reached was "no store at ..." (fsspec says "not found" for a refused connection)
    import urllib.parse

    from daskimg.errors import ServerError
    from daskimg.store import ranged

    url = _serve(server, _store(tmp_path, noisy_set))
    ds = di.open_zarr(url, storage_options={})
    with dask.config.set(scheduler="synchronous"):  # reads on this thread's connection
        np.testing.assert_array_equal(ds.images[:4].compute(), noisy_set.images[:4])
        server.shutdown()
        server.server_close()
        ranged._CONNECTIONS.drop(urllib.parse.urlsplit(url))  # as the server's end closed it
        with pytest.raises(ServerError, match=r"s\.zarr\.zip: reading .*ConnectionRefused"):
            ds.images.compute()
    with pytest.raises(ServerError, match=r"s\.zarr\.zip.*ConnectionRefused"):
        di.open_zarr(url, storage_options={})  # opened again (fsspec may know its size)
    import socket

    with socket.socket() as free:  # a port nothing listens on: never reached
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    nowhere = f"http://127.0.0.1:{port}/t.zarr.zip"
    with pytest.raises(ServerError, match=r"cannot reach the server of .*t\.zarr\.zip"):
        di.open_zarr(nowhere, storage_options={})


def test_object_storage_refusing_access_names_the_store_and_what_to_check(monkeypatch):
    # wrong credentials gave a bare PermissionError('Forbidden'), naming no store
    from fsspec.implementations.memory import MemoryFileSystem

    from daskimg.cli import main
    from daskimg.store.location import Location

    class Refusing(MemoryFileSystem):  # what s3fs does with a wrong key
        cachable = False

        def info(self, path, **kwargs):
            raise PermissionError("Forbidden")

        exists = find = ls = cat_file = info

    monkeypatch.setattr(Location, "_fs", lambda self: (Refusing(), "bucket/t.zarr.zip"))
    url = "s3://bucket/t.zarr.zip"
    with pytest.raises(PermissionError, match="Forbidden") as e:
        di.open_zarr(url)
    assert any(url in n and "credentials" in n for n in e.value.__notes__)
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(PermissionError) as e:
        di.to_zarr(di.ImageSet(images), url)
    assert any("writing" in n and url in n for n in e.value.__notes__)
    assert main(["info", url]) == 2  # one line, with the store and what to check


@pytest.mark.parametrize("status", [503, 429, 403, 401])
def test_a_server_failing_while_a_store_is_opened_is_named_not_called_missing(
    tmp_path, server, noisy_set, monkeypatch, status
):
    # every failed answer while opening (the size asked for) was "no store at ..." (fsspec
    # says not found for any status): a busy server, an expired signed URL alike
    import daskimg.store.ranged as ranged
    from daskimg.errors import ServerError

    monkeypatch.setattr(ranged, "_BACKOFF", (0.0, 0.0))
    url = _serve(server, _store(tmp_path, noisy_set))
    server.fail_status = status
    if status in (503, 429):
        server.fail_all = 2  # busy for a moment: asked again, opened
        np.testing.assert_array_equal(di.open_zarr(url).images.compute(), noisy_set.images)
        server.fail_all = 10**6
        with pytest.raises(ServerError, match=rf"HTTP {status} each time.*try again later"):
            di.open_zarr(url)
    else:
        server.fail_all = 10**6
        with pytest.raises(PermissionError, match=rf"refused access \(HTTP {status}\)"):
            di.open_zarr(url)
    server.fail_all = 0
    with pytest.raises(FileNotFoundError, match="no store at"):
        di.open_zarr(server.base + "/other.zarr.zip")  # a 404 is no store


def test_an_answer_cut_short_by_a_closed_connection_is_asked_again_then_named(
    tmp_path, server, noisy_set, small_is_tiny
):
    # a connection closed halfway through an answer (http.client reads it as its end) was
    # a ChecksumError, "re-create it": the network blamed on the store
    from daskimg.errors import ServerError

    url = _serve(server, _store(tmp_path, noisy_set))
    ds = di.open_zarr(url)
    server.half_ranged = 1  # once: read again on a new connection
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)  # the oracle
    assert server.half_ranged == 0
    server.half_ranged = 10**6
    with pytest.raises(ServerError, match=r"s\.zarr\.zip.*failed: IncompleteRead.*says nothing"):
        di.open_zarr(url).images.compute()


def test_a_connection_reset_mid_answer_is_asked_again_then_named(
    tmp_path, server, noisy_set, small_is_tiny
):
    # a reset while the zip's tail was read on opening escaped as a bare
    # ConnectionResetError naming nothing (a second try would have read it)
    from daskimg.errors import ServerError

    url = _serve(server, _store(tmp_path, noisy_set))
    server.cut_ranged = 1
    ds = di.open_zarr(url)
    assert server.cut_ranged == 0
    server.cut_ranged = 1  # a chunk read cut once: read again on a new connection
    np.testing.assert_array_equal(ds.images.compute(), noisy_set.images)
    assert server.cut_ranged == 0
    server.cut_ranged = 10**6
    with pytest.raises(ServerError, match=r"s\.zarr\.zip.*reading.*failed.*Connection"):
        di.open_zarr(url)


def test_a_memory_store_opened_in_a_spawned_process_is_said_to_be_the_parents(
    tmp_path, indexed_set
):
    # a DataLoader worker spawned with the URL alone (multiprocessing_context="spawn") said
    # "no store at 'memory://...'", which was there, in the process that started it
    import multiprocessing

    from daskimg.errors import ProcessLocalError

    url = "memory://spawned/s.zarr.zip"
    di.to_zarr(indexed_set, url, overwrite=True, order="source")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        with pytest.raises(ProcessLocalError, match=r"started by another \(pid \d+\)"):
            pool.apply(di.open_zarr, (url,))
        with pytest.raises(FileNotFoundError, match="no store at 'memory://nowhere"):
            di.open_zarr("memory://nowhere/s.zarr.zip")  # here: no store, said as before
    # a forked child has its parent's objects: a name not there is no store, not the parent's
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_labels_of, (url,)) == indexed_set.labels.tolist()
        with pytest.raises(FileNotFoundError, match="no store at 'memory://spawned/typo"):
            pool.apply(di.open_zarr, ("memory://spawned/typo.zarr.zip",))


def _labels_of(url):
    return di.open_zarr(url).labels.tolist()


def test_images_at_signed_urls_are_read_with_their_query_as_given(server):
    # imread of presigned image URLs: fsspec re-quoted the query (a signature's %2F went out
    # as /), and the server's 403/404 was said as "no such file"
    import io

    from PIL import Image

    pixels = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    server.files["/a.png?sig=a%2Fb"] = png.getvalue()
    server.files["/my%20d/b.png?sig=1"] = png.getvalue()
    server.files["/c.png"] = png.getvalue()
    urls = [f"{server.base}/a.png?sig=a%2Fb", f"{server.base}/my d/b.png?sig=1"]
    got = di.imread([*urls, f"{server.base}/c.png"], size=(8, 8)).compute()
    for image in got:
        np.testing.assert_array_equal(image, pixels)
