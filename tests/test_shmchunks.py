"""The cluster's chunks handed over in shared memory (daskimg.store.shmchunks): the
worker's buffers and the client's checks, then a real cluster whose chunks are read there,
one whose worker's buffer cannot be opened, and one where none can."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
from conftest import plain_group

import daskimg as di
from daskimg.errors import DaskImgError
from daskimg.store import shmchunks
from daskimg.storeinfo import verify

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"), reason="Linux memfd"
)


def test_buffers_are_read_checked_and_reused():
    token = shmchunks.new_token()
    try:
        data = np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)
        taken = shmchunks.take(token, 6000)
        assert taken is not None
        taken.data[100:5100] = data.tobytes()
        body = taken.body(100, 5100)
        with shmchunks.Receiver() as receiver:
            view = receiver.view(body)
            np.testing.assert_array_equal(np.frombuffer(view, np.uint8), data)
            # busy until the shard holding it is written: a second task gets another buffer
            other = shmchunks.take(token, 6000)
            assert other is not None
            assert other.body(0, 1).name != body.name
            other.give_back()
            receiver.written([view])()  # the shard is written: the buffer is free again
            again = shmchunks.take(token, 6000)
            assert again is not None
            newer = again.body(0, 10)
            assert newer.name == body.name and newer.gen == body.gen + 1
            # the old address now names a reused buffer: refused, never read
            with pytest.raises(DaskImgError, match="does not hold the chunk"):
                receiver.view(body)
        forged = shmchunks.SharedBody(os.getpid(), body.fd + 1000, body.name, body.gen, 0, 1)
        with pytest.raises(FileNotFoundError):  # no such fd: the caller decodes it again
            shmchunks.Receiver().view(forged)
    finally:
        assert shmchunks.release(token) == 2
    # a task of a write already released (cancelled, still running) gets no buffer: it
    # sends its chunk through TCP, and no busy buffer is left that no one would free
    assert shmchunks.take(token, 6000) is None and token not in shmchunks._POOLS
    # at most `most` bytes held busy (they cannot be spilled): past it, no new buffer
    token = shmchunks.new_token()
    try:
        first = shmchunks.take(token, 6000, most=2 * (shmchunks.CTRL + 6000) - 1)
        assert first is not None
        assert shmchunks.take(token, 6000, most=2 * (shmchunks.CTRL + 6000) - 1) is None
        first.give_back()  # a free one is reused whatever the limit
        assert shmchunks.take(token, 6000, most=0) is not None
    finally:
        shmchunks.release(token)
    # another file opened at a buffer's fd number is not taken for it
    with open(__file__, "rb") as fh:
        wrong = shmchunks.SharedBody(os.getpid(), fh.fileno(), "daskimg-x-0", 1, 0, 1)
        with pytest.raises(FileNotFoundError, match="not the shared buffer"):
            shmchunks.Receiver().view(wrong)


distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    src = tmp_path_factory.mktemp("photos")
    di.testing.make_photo_folder(src, n_per_class=7, size=(60, 80), seed=3)
    return src


def _check(out, reference):
    a, b = plain_group(out), plain_group(reference)
    for name in ("images", "labels", "source_size"):
        np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=name)
    assert verify(out) == []


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "threads.zarr.zip"
    with dask.config.set(scheduler="threads"):
        di.to_zarr(di.from_folder(photos, size=(64, 64)), out, chunks=8, seed=1, codec="none")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fail", ["none", "one", "all"])
def test_cluster_chunks_in_shared_memory(tmp_path, photos, reference, cluster, monkeypatch, fail):
    """Read from the workers' memory ('none' fails); one chunk whose buffer cannot be
    opened (its worker ended) is decoded again and sent through TCP ('one'); no buffer can
    be opened (another user's workers, /proc hidden): the probe says so, and every chunk
    goes through TCP ('all'). Each store is the threaded one, chunk for chunk, and the
    workers keep no buffer of the write."""
    opened, failed = [], []
    real = shmchunks._open

    def flaky(body):
        if fail == "all" or (fail == "one" and not failed and len(opened) == 3):
            failed.append(body.name)
            raise FileNotFoundError(2, "No such file or directory", body.name)
        opened.append(body.name)
        return real(body)

    monkeypatch.setattr(shmchunks, "_open", flaky)
    views = []
    real_view = shmchunks.Receiver.view
    monkeypatch.setattr(
        shmchunks.Receiver, "view", lambda self, body: views.append(body) or real_view(self, body)
    )
    out = tmp_path / "cluster.zarr.zip"
    with distributed.Client(cluster):
        # (uncompressed: every chunk of images is its own body, decoded into the buffer)
        di.to_zarr(di.from_folder(photos, size=(64, 64)), out, chunks=8, seed=1, codec="none")
        left = distributed.get_client().run(
            lambda: {k: len(v) for k, v in shmchunks._POOLS.items()}
        )
    _check(out, reference)
    assert all(not pools for pools in left.values()), left  # the workers closed its buffers
    chunks = -(-len(di.from_folder(photos, size=(8, 8))) // 8)
    if fail == "none":
        assert len(views) == 2 + chunks  # the two probes, then every chunk
    elif fail == "one":
        assert len(failed) == 1 and len(views) == 2 + chunks
    else:
        assert len(failed) == 1 and len(views) == 1  # the first probe failed: not used
