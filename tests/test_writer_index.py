"""ArrayWriter places rows by store index: predictions land on their samples whatever the
order batches arrive in (``append(batch, index=...)``, ``order="index"``)."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import tracemalloc

import dask.array as da
import numpy as np
import pytest
from conftest import plain_group

import daskimg as di
from daskimg.errors import DaskImgError, StoreExistsError
from daskimg.storeinfo import verify
from daskimg.writeback import staging as writer_staging
from daskimg.writeback.writer import ArrayWriter

EXTS = [".zarr.zip", ".zarr"]


def leftovers(path) -> list[str]:
    p = str(path)
    return [s for s in (".partial", ".lock", ".tmp") if os.path.lexists(p + s)]


def predict(images: np.ndarray) -> np.ndarray:
    """A stand-in model: 3 numbers per image that depend on its pixels."""
    x = images.reshape(len(images), -1).astype(np.float32)
    return np.stack([x.mean(1), x[:, 0], x[:, -1]], axis=1).astype(np.float32)


def image_set(n: int, seed: int = 0) -> di.ImageSet:
    rng = np.random.default_rng(seed)
    return di.ImageSet(
        rng.integers(0, 255, (n, 6, 5, 3)).astype(np.uint8),
        np.arange(n) % 3,
        classes=["a", "b", "c"],
        paths=[f"img/{i:04d}.png" for i in range(n)],
    )


def interleaved(n: int, batch: int, workers: int, seed: int) -> list[np.ndarray]:
    """Store indices of the batches a DataLoader with ``workers`` workers hands over: each
    worker reads every ``workers``-th batch of the store order, the workers race, and a
    batch's rows may be permuted (a per-worker buffer shuffle)."""
    rng = np.random.default_rng(seed)
    batches = [np.arange(a, min(n, a + batch)) for a in range(0, n, batch)]
    queues = [batches[w::workers] for w in range(workers)]
    out = []
    while any(queues):
        w = rng.choice([i for i, q in enumerate(queues) if q])
        b = queues[w].pop(0)
        out.append(rng.permutation(b) if rng.random() < 0.5 else b)
    return out


# -- the README's write-back pattern -------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_readme_write_back_pattern_rows_land_on_their_samples(tmp_path, ext):
    p = tmp_path / f"train{ext}"
    ds = image_set(83)
    di.to_zarr(ds, p, chunks=8, shard_chunks=2)  # shuffled: store order is not source order
    images = di.open_zarr(p).images.compute()
    oracle = predict(images)  # row i: the prediction for the store's sample i
    batches = interleaved(len(images), batch=10, workers=3, seed=1)
    assert [b.tolist() for b in batches] != sorted(b.tolist() for b in batches)  # scrambled
    with ArrayWriter(p, name="pred", shape=(3,), dtype="float32", mode="a") as w:
        for index in batches:
            w.append(predict(images[index]), index=index)  # what the model saw, with its index
    got = di.open_zarr(p)
    pred = got.arrays["pred"].compute()
    for i in range(len(images)):
        np.testing.assert_array_equal(pred[i], oracle[i])
    np.testing.assert_array_equal(plain_group(p)["pred"][...], oracle)
    np.testing.assert_array_equal(got.labels, di.open_zarr(p).labels)  # the rest is kept
    assert got.arrays["pred"].chunks[0][0] == 8
    assert verify(p) == [] and leftovers(p) == []


@pytest.mark.parametrize("how", ["take", "split", "take of a take"])
def test_index_of_a_subset_of_a_store_is_the_store_index(tmp_path, how):
    # inference class by class (ds.take(np.argsort(ds.labels))): "index" was the row in the
    # subset, so predictions written back by it landed on other samples, silently
    p = tmp_path / "train.zarr.zip"
    di.to_zarr(image_set(40), p, chunks=8)
    ds = di.open_zarr(p)
    images = ds.images.compute()
    order = np.argsort(ds.labels, kind="stable")
    if how == "take":
        parts = [ds.take(order)]
    elif how == "split":
        parts = list(ds.split({"a": 0.5, "b": 0.5}, seed=3).values())
    else:
        parts = [ds.take(order).take(np.arange(39, -1, -1))]
    assert sorted(np.concatenate([q.store_rows for q in parts]).tolist()) == list(range(40))
    with ArrayWriter(p, name="pred", shape=(3,), dtype="float32", mode="a") as w:
        for part in parts:
            for batch, index in di.BatchIterator(
                part, batch_size=7, shuffle=True, arrays=("images", "index")
            ):
                np.testing.assert_array_equal(batch, images[index])  # index names the sample
                w.append(predict(batch), index=index)
    np.testing.assert_array_equal(plain_group(p)["pred"][...], predict(images))


def test_appends_from_several_threads_with_indices(tmp_path):
    # DataLoader-style: batches finished by several threads, in whatever order they finish
    p = tmp_path / "t.zarr"
    n = 211
    di.to_zarr(image_set(n), p, chunks=16, shard_chunks=2, order="source")
    oracle = np.arange(n, dtype=np.int64) * 3
    batches = interleaved(n, batch=7, workers=4, seed=2)
    w = ArrayWriter(p, name="score", shape=(), dtype="int64", mode="a", checkpoint_every=0)
    go = threading.Barrier(4)

    def work(t):
        go.wait()
        for b in batches[t::4]:
            w.append(oracle[b], index=b)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))
    w.close()
    np.testing.assert_array_equal(plain_group(p)["score"][...], oracle)
    np.testing.assert_array_equal(di.open_zarr(p).arrays["score"], oracle)


# -- what is refused -------------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_mode_a_refuses_rows_it_cannot_align(tmp_path, ext):
    p = tmp_path / f"s{ext}"
    n = 30
    di.to_zarr(image_set(n), p, chunks=8)
    w = ArrayWriter(p, name="pred", shape=(), dtype="float32", mode="a")
    with pytest.raises(
        ValueError, match=r"needs index=.*arrays=\('images', 'index'\).*order='store'"
    ):
        w.append(np.zeros(5, np.float32))  # no index: the writer cannot know where rows go
    w.append(np.arange(5, dtype=np.float32), index=np.arange(5))
    bad = [
        (np.arange(4, 9), ValueError, "index 4 was written already"),
        (np.arange(4, 9), ValueError, "written already.*pads ranks.*even=False"),
        (np.array([5, 6, 6, 7, 8]), ValueError, "index 6 appears more than once"),
        # the same hint within a batch: padding may put a sample twice in one batch
        (np.array([5, 6, 6, 7, 8]), ValueError, "more than once.*pads ranks.*even=False"),
        (
            np.array([28, 29, 30, 31, 10]),
            ValueError,
            rf"index 30 is out of range: .* {n} samples \(0\.\.{n - 1}\)",
        ),
        (np.array([-1, 5, 6, 7, 8]), ValueError, "index -1 is out of range"),
        (np.arange(5, 9), ValueError, "index has 4 entries but the batch has 5 rows"),
        (np.arange(5, 10).astype(float), TypeError, "index must hold integers"),
        (np.arange(5, 15).reshape(5, 2), ValueError, "1-D sequence of store indices"),
        (slice(28, None), ValueError, "index 30 is out of range"),
    ]
    for index, err, msg in bad:
        with pytest.raises(err, match=msg):
            w.append(np.full(5, 99, np.float32), index=index)
        assert len(w) == 5  # refused before anything changed
    with pytest.raises(
        ValueError, match=rf"{n - 5} of {n} samples have no row yet \(the first is index 5\)"
    ):
        w.close()  # the writer stays open
    np.testing.assert_array_equal(w.missing(), np.arange(5, n))
    w.append(np.arange(5, 15, dtype=np.float32), index=range(5, 15))
    w.append(np.arange(15, 20, dtype=np.float32), index=slice(15, 20))
    w.append(np.arange(20, n, dtype=np.float32)[::-1], index=np.arange(20, n)[::-1])
    w.close()
    np.testing.assert_array_equal(di.open_zarr(p).arrays["pred"].compute(), np.arange(n))
    assert verify(p) == [] and leftovers(p) == []


def test_torch_index_and_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    p = tmp_path / "t.zarr.zip"
    with ArrayWriter(p, name="pred", shape=(2,), dtype="float32", num_samples=6) as w:
        w.append(torch.ones(3, 2), index=torch.tensor([5, 0, 3]))
        w.append(torch.zeros(3, 2), index=torch.tensor([1, 2, 4]))
    np.testing.assert_array_equal(plain_group(p)["pred"][...][:, 0], [1, 0, 0, 1, 0, 1])


def test_order_store_is_an_explicit_promise_and_checks_an_index_given(tmp_path):
    p = tmp_path / "s.zarr"
    n = 20
    di.to_zarr(image_set(n), p, chunks=8, order="source")
    with ArrayWriter(p, name="pred", shape=(), dtype="int64", mode="a", order="store") as w:
        w.append(np.arange(8))  # no index: taken in arrival order
        with pytest.raises(ValueError, match=r"samples 8\.\.11, but index= says \[9, 8, 10, 11\]"):
            w.append(np.arange(8, 12), index=[9, 8, 10, 11])
        w.append(np.arange(8, 12), index=range(8, 12))  # the next rows: fine
        w.append(np.arange(12, n))
    np.testing.assert_array_equal(plain_group(p)["pred"][...], np.arange(n))


def test_mode_w_places_by_index_with_num_samples(tmp_path):
    p = tmp_path / "w.zarr.zip"
    with pytest.raises(ValueError, match="pass num_samples=N too"):
        ArrayWriter(p, shape=(), dtype="int64", order="index")
    with pytest.raises(ValueError, match="order must be 'index'"):
        ArrayWriter(p, shape=(), dtype="int64", order="shuffled")
    with ArrayWriter(p, shape=(), dtype="int64") as w:  # length unknown: arrival order
        with pytest.raises(ValueError, match="pass num_samples=N to ArrayWriter"):
            w.append(np.arange(3), index=np.arange(3))
        w.append(np.arange(3))
    n = 50
    batches = interleaved(n, batch=6, workers=2, seed=3)
    with ArrayWriter(p, shape=(2,), dtype="int64", num_samples=n, chunks=4, overwrite=True) as w:
        assert w.order == "index" and w.num_samples == n
        with pytest.raises(ValueError, match=r"places rows by store index \(num_samples=50\)"):
            w.append(np.zeros((2, 2), np.int64))
        for b in batches:
            w.append(np.stack([b, -b], 1), index=b)
    np.testing.assert_array_equal(
        plain_group(p)["features"][...], np.stack([np.arange(n), -np.arange(n)], 1)
    )
    # order="store" with num_samples: the count is checked at close
    w = ArrayWriter(p, shape=(), dtype="int64", num_samples=4, order="store", overwrite=True)
    w.append(np.arange(3))
    with pytest.raises(ValueError, match="has 4 samples but 3 rows were appended"):
        w.close()
    w.append(np.array([3]))
    w.close()
    np.testing.assert_array_equal(plain_group(p)["features"][...], np.arange(4))
    with pytest.raises(ValueError, match="leave num_samples unset with mode='a'"):
        ArrayWriter(p, name="x", shape=(), dtype="int64", mode="a", num_samples=5)


def test_dask_batches_with_an_index_are_all_or_nothing(tmp_path):
    p = tmp_path / "d.zarr"
    n = 60
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 2:
            raise RuntimeError("model crashed")
        return block

    oracle = np.arange(n, dtype=np.float32) / 7
    with ArrayWriter(p, shape=(), dtype="float32", num_samples=n, chunks=4, shard_chunks=2) as w:
        first = perm[:20]
        w.append(da.from_array(oracle[first], chunks=6), index=first)
        rest = perm[20:]
        failing = da.from_array(oracle[rest], chunks=8).map_blocks(boom, dtype=np.float32)
        with pytest.raises(RuntimeError, match="model crashed"):
            w.append(failing, index=rest)  # two pieces were placed before: none counts
        assert len(w) == 20
        np.testing.assert_array_equal(w.missing(), np.sort(rest))
        w.append(da.from_array(oracle[rest], chunks=8), index=rest)
    np.testing.assert_array_equal(plain_group(p)["features"][...], oracle)
    assert verify(p) == []


# -- checkpoints, resume, memory -----------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_resume_restores_exactly_the_rows_of_the_last_checkpoint(tmp_path, ext):
    p = tmp_path / f"s{ext}"
    n = 77
    di.to_zarr(image_set(n), p, chunks=8, shard_chunks=2)
    oracle = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    batches = interleaved(n, batch=5, workers=3, seed=4)
    spec = {"name": "pred", "shape": (2,), "dtype": "float32", "mode": "a"}
    w = ArrayWriter(p, **spec, checkpoint_every=None)
    for b in batches[:9]:
        w.append(oracle[b], index=b)
    assert w.checkpoint() == sum(len(b) for b in batches[:9])
    for b in batches[9:12]:  # not covered by a checkpoint: lost in a crash
        w.append(oracle[b] + 1000, index=b)
    del w  # abandoned without close (as after a crash): the lock is released
    with pytest.raises(ValueError, match=r"cannot resume.*order='index'"):
        ArrayWriter(p, **spec, order="store", resume=True)
    w = ArrayWriter(p, **spec, resume=True)
    done = np.concatenate(batches[:9])
    assert len(w) == w.durable_rows == len(done)
    np.testing.assert_array_equal(w.missing(), np.setdiff1d(np.arange(n), done))
    with pytest.raises(ValueError, match="was written already"):
        w.append(oracle[batches[0]], index=batches[0])
    todo = set(w.missing().tolist())
    for b in batches:
        if todo.issuperset(b.tolist()):
            w.append(oracle[b], index=b)
    w.close()
    np.testing.assert_array_equal(di.open_zarr(p).arrays["pred"].compute(), oracle)
    np.testing.assert_array_equal(plain_group(p)["pred"][...], oracle)
    assert verify(p) == [] and leftovers(p) == []


def test_a_resume_without_num_samples_names_it(tmp_path):
    # "it was started with order='index'" where the user had passed num_samples=, not order=
    p = tmp_path / "w.zarr.zip"
    w = ArrayWriter(p, name="pred", shape=(2,), dtype="float32", num_samples=6)
    w.append(np.ones((2, 2), np.float32), index=[4, 1])
    w.checkpoint()
    del w
    with pytest.raises(ValueError, match=r"order='index' \(the default with num_samples=6\)"):
        ArrayWriter(p, name="pred", shape=(2,), dtype="float32", resume=True)
    with ArrayWriter(p, name="pred", shape=(2,), dtype="float32", num_samples=6, resume=True) as w:
        np.testing.assert_array_equal(w.missing(), [0, 2, 3, 5])
        w.append(np.zeros((4, 2), np.float32), index=[0, 2, 3, 5])
    np.testing.assert_array_equal(plain_group(p)["pred"][:, 0], [0, 1, 0, 0, 1, 0])


@pytest.mark.parametrize("kind", ["s.zarr", "s.zarr.zip"])
def test_a_ctrl_c_after_the_store_moved_into_place_leaves_a_finished_write(tmp_path, kind):
    # a Ctrl-C while close() removed the staging folder, after the atomic move: the column
    # was published, whole, but the writer said "moving the store into place failed",
    # close() again raised, and resume=True said "pass overwrite=True" (a user redid a
    # finished write). (A kill there: tests/test_writer_kill.py, resumed as published.)
    p = tmp_path / kind
    n = 24
    di.to_zarr(image_set(n), p, chunks=8)
    spec = {"name": "pred", "shape": (), "dtype": "float32", "mode": "a"}

    def interrupted(path, real=writer_staging.remove_path):
        if path.endswith(".partial"):
            raise KeyboardInterrupt
        real(path)

    w = ArrayWriter(p, **spec)
    w.append(np.arange(n, dtype=np.float32), index=np.arange(n))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(writer_staging, "remove_path", interrupted)
        with pytest.raises(KeyboardInterrupt):
            w.close()
    np.testing.assert_array_equal(plain_group(p)["pred"][...], np.arange(n))  # the oracle
    w.close()  # done: nothing left to do, no error
    assert leftovers(p) == [] and verify(p) == []
    with pytest.raises(StoreExistsError, match="found no unfinished write"):
        ArrayWriter(p, **spec, resume=True)  # finished and cleaned up: says so
    # the same in a with block (__exit__ then left the write "unfinished": its checkpoint
    # failed in the staging folder removed, and close() again said "cannot continue")
    spec["name"] = "in_with"
    w = ArrayWriter(p, **spec)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(writer_staging, "remove_path", interrupted)
        with pytest.raises(KeyboardInterrupt), w:
            w.append(np.arange(n, dtype=np.float32) * 2, index=np.arange(n))
    np.testing.assert_array_equal(plain_group(p)["in_with"][...], np.arange(n) * 2)
    w.close()
    assert leftovers(p) == [] and verify(p) == []
    # an interrupt before the move is still a write left unfinished, resumed as such
    spec["name"] = "second"
    w = ArrayWriter(p, **spec)
    w.append(np.arange(n, dtype=np.float32) + 1, index=np.arange(n))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(writer_staging.Location, "publish", lambda *a, **k: (_ for _ in ()).throw(
            KeyboardInterrupt))  # fmt: skip
        with pytest.raises(KeyboardInterrupt):
            w.close()
    assert "second" not in plain_group(p)
    with pytest.raises(DaskImgError, match="moving the store into place failed"):
        w.close()
    with ArrayWriter(p, **spec, resume=True) as w:
        assert len(w) == n
    np.testing.assert_array_equal(plain_group(p)["second"][...], np.arange(n) + 1)


def test_memory_stays_bounded_for_scattered_rows(tmp_path):
    # 48 MiB of rows arriving in a random order: what is held is a shard or two, not the rows
    n, d = 12_288, 1024
    p = tmp_path / "m.zarr.zip"
    perm = np.random.default_rng(5).permutation(n)
    batches = np.array_split(perm, n // 64)
    row = np.arange(d, dtype=np.float32)
    tracemalloc.start()
    try:
        with ArrayWriter(
            p, shape=(d,), dtype="float32", num_samples=n, chunks=64, shard_chunks=2, threads=1
        ) as w:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for b in batches:
                w.append(b[:, None].astype(np.float32) + row, index=b)
            peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 6 * 2**20, peak  # batches of 256 KiB, shards of 512 KiB; rows total 48 MiB
    g = plain_group(p)["features"]
    for i in (0, 1, 777, n - 1):
        np.testing.assert_array_equal(g[i], i + row)


def test_failed_staging_write_refuses_the_batch_and_keeps_the_writer(tmp_path, monkeypatch):
    p = tmp_path / "f.zarr.zip"
    from daskimg.writeback import placed

    with ArrayWriter(p, shape=(), dtype="int64", num_samples=10, chunks=2, threads=0) as w:
        w.append(np.arange(4), index=np.arange(4))
        real = placed.pwrite_all

        def full(fd, data, offset):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(placed, "pwrite_all", full)
        with pytest.raises(OSError, match="No space"):
            w.append(np.arange(4, 8), index=np.arange(4, 8))
        monkeypatch.setattr(placed, "pwrite_all", real)
        assert len(w) == 4
        w.append(np.arange(4, 10), index=np.arange(4, 10))
    np.testing.assert_array_equal(plain_group(p)["features"][...], np.arange(10))


@pytest.mark.parametrize("dtype", ["float32", str])
def test_staged_rows_damaged_before_a_resume_are_named_not_published(tmp_path, dtype):
    # the staging file of rows placed by index had no checksums: a bit flipped on disk
    # between the kill and the resume was published into the store as it read
    p = tmp_path / "d.zarr"
    n, first = 20, np.array([0, 1, 2, 5, 6, 9])
    oracle = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    if dtype is str:
        oracle = np.array([f"sample {i}" for i in range(n)], dtype=object)
    spec = {"shape": () if dtype is str else (3,), "dtype": dtype, "num_samples": n, "chunks": 4}
    w = ArrayWriter(p, **spec, checkpoint_every=0)
    w.append(oracle[first], index=first)
    del w
    staging = tmp_path / "d.zarr.partial"
    damaged = staging / ("text-features.bin" if dtype is str else "rows-features.bin")
    data = bytearray(damaged.read_bytes())
    at = 3 * len("sample 0") + 3 if dtype is str else 5 * 12 + 1  # inside sample 5's row
    data[at] ^= 0x01
    damaged.write_bytes(bytes(data))
    w = ArrayWriter(p, **spec, resume=True)
    np.testing.assert_array_equal(w.missing(), np.setdiff1d(np.arange(n), first))

    def finish() -> None:  # the shard is read back in the background: append or close raises
        w.append(oracle[w.missing()], index=w.missing())
        w.close()

    with pytest.raises(DaskImgError, match=r"staged row of sample 5 of 'features'.*checksum"):
        finish()
    del w
    with ArrayWriter(p, **spec) as w:  # resume=False: start over
        w.append(oracle, index=np.arange(n))
    assert plain_group(p)["features"][...].tolist() == oracle.tolist()


@pytest.mark.parametrize("dtype", ["float32", str])
@pytest.mark.parametrize("ext", EXTS)
def test_a_staged_shard_damaged_before_a_resume_is_written_again_not_published(
    tmp_path, ext, dtype
):
    # a shard written (from checked rows) before the kill, then a flipped byte in its chunk
    # data: the resume kept it, close() published it, and the store's first read (and
    # `verify`) failed on a store that had replaced the good one
    import glob

    p = tmp_path / f"s{ext}"
    n = 24
    oracle = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    if dtype is str:
        oracle = np.array([f"sample number {i}" for i in range(n)], dtype=object)
    spec = {
        "shape": () if dtype is str else (4,),
        "dtype": dtype,
        "num_samples": n,
        "chunks": 4,
        "shard_chunks": 2,
        "codec": "none",
    }
    w = ArrayWriter(p, **spec, checkpoint_every=0)
    w.append(oracle[:16], index=np.arange(16))  # shards 0 and 1 full, written
    w.checkpoint()
    del w
    shards = sorted(glob.glob(str(tmp_path / f"s{ext}.partial" / "store" / "features" / "c" / "*")))
    shard = next(
        f for f in [shards[0], *glob.glob(shards[0] + "/**", recursive=True)] if os.path.isfile(f)
    )
    with open(shard, "r+b") as fh:
        data = bytearray(fh.read())
        data[10] ^= 0xFF  # inside its first chunk's data
        fh.seek(0)
        fh.write(bytes(data))
    with ArrayWriter(p, **spec, resume=True) as w:
        w.append(oracle[16:], index=np.arange(16, n))
    assert plain_group(p)["features"][...].tolist() == oracle.tolist()  # the oracle: plain zarr
    assert verify(p) == []
    got = di.open_zarr(p).arrays["features"].compute()
    assert got.tolist() == oracle.tolist()


def test_ctrl_c_during_closes_checkpoint_keeps_the_rows_to_resume(tmp_path, monkeypatch):
    # a Ctrl-C (SIGINT) landing inside close()'s checkpoint (its fsyncs) marked the writer
    # broken, so the with block's own checkpoint was skipped: a resume found 0 of the 12
    # rows, which were on disk
    import signal

    p = tmp_path / "c.zarr.zip"
    spec = {"shape": (2,), "dtype": "float32", "num_samples": 20, "chunks": 4}
    oracle = np.arange(40, dtype=np.float32).reshape(20, 2)
    real = writer_staging.save_checkpoint
    pressed = []

    def ctrl_c_inside(*args, **kwargs):
        if not pressed:
            pressed.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # as a user pressing Ctrl-C, mid-checkpoint
        return real(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt), ArrayWriter(p, **spec, checkpoint_every=None) as w:  # noqa: PT012
        w.append(oracle[:12], index=np.arange(12))
        monkeypatch.setattr(writer_staging, "save_checkpoint", ctrl_c_inside)
    monkeypatch.setattr(writer_staging, "save_checkpoint", real)
    assert pressed and not os.path.exists(p)  # interrupted: nothing published
    with ArrayWriter(p, **spec, resume=True) as w:
        assert len(w) == 12
        w.append(oracle[12:], index=np.arange(12, 20))
    np.testing.assert_array_equal(plain_group(p)["features"][...], oracle)


def test_resume_of_a_new_store_whose_write_finished_says_so(tmp_path):
    # a kill just after close() returned, and the script run again with resume=True: the
    # message said "exists; pass overwrite=True to replace it", throwing a complete store away
    p = tmp_path / "f.zarr.zip"
    spec = {"name": "feat", "shape": (4,), "dtype": "float32", "chunks": 8}
    with ArrayWriter(p, **spec) as w:
        w.append(np.zeros((16, 4), np.float32))
    with pytest.raises(StoreExistsError, match="resume=True found no unfinished write here"):
        ArrayWriter(p, **spec, resume=True)
    assert plain_group(p)["feat"].shape == (16, 4)


@pytest.mark.parametrize("damage", ["crc-features.bin", "rows-features.bin", "text-features.bin"])
def test_a_staging_file_cut_or_removed_before_a_resume_is_the_one_named(tmp_path, damage):
    # a removed crc file was reported as "the staging file of 'features' is truncated (808
    # bytes, expected 808)": the rows file, intact, and two equal sizes
    p = tmp_path / "d.zarr"
    text = damage.startswith("text")
    spec = {"shape": () if text else (3,), "dtype": str if text else "float32", "num_samples": 20}
    rows = np.array([f"sample {i}" for i in range(6)], dtype=object) if text else np.ones((6, 3))
    w = ArrayWriter(p, **spec, chunks=4, checkpoint_every=0)
    w.append(rows, index=np.arange(6))
    del w
    staged = tmp_path / "d.zarr.partial" / damage
    size = staged.stat().st_size
    if damage.startswith("crc"):
        staged.unlink()
    else:
        staged.write_bytes(staged.read_bytes()[: size // 2])
    with pytest.raises(DaskImgError, match="cannot resume") as e:
        ArrayWriter(p, **spec, resume=True)
    got = 0 if damage.startswith("crc") else size // 2
    least = "at least " if text else ""
    assert f"the staging file '{damage}' of 'features' is {got} bytes, {least}{size}" in str(
        e.value
    )


def test_damaged_staging_bitmap_is_refused_on_resume(tmp_path):
    p = tmp_path / "b.zarr"
    w = ArrayWriter(p, shape=(), dtype="int64", num_samples=10, checkpoint_every=0)
    w.append(np.arange(3), index=np.arange(3))
    del w
    staging = tmp_path / "b.zarr.partial"
    (bitmap,) = staging.glob("filled-*.bin")
    bitmap.write_bytes(b"\xff\xff")
    with pytest.raises(DaskImgError, match=r"record of the rows written is damaged.*resume=False"):
        ArrayWriter(p, shape=(), dtype="int64", num_samples=10, resume=True)
    with ArrayWriter(p, shape=(), dtype="int64", num_samples=10) as w:  # resume=False: over
        w.append(np.arange(10), index=np.arange(10))


@pytest.mark.parametrize("name", ["p.zarr.zip", "p.zarr"])
def test_placed_rows_and_text_to_a_url(tmp_path, monkeypatch, name):
    # built locally (tempfile.gettempdir() here is tmp_path), uploaded by close()
    pytest.importorskip("fsspec")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    url = f"memory://writer-index-{os.getpid()}/{name}"
    n = 45
    oracle = np.arange(n, dtype=np.float32)
    words = [f"s3-name-{i}-é" for i in range(n)]
    batches = interleaved(n, batch=8, workers=2, seed=6)
    arrays = {"pred": ((), "float32"), "paths": ((), str)}
    with ArrayWriter(url, arrays=arrays, num_samples=n, storage_options={}) as w:
        for b in batches:
            w.append(pred=oracle[b], paths=[words[i] for i in b], index=b)
    ds = di.open_zarr(url, storage_options={})
    np.testing.assert_array_equal(ds.arrays["pred"].compute(), oracle)
    assert ds.paths.tolist() == words
    assert verify(url, storage_options={}) == []
    assert not any((tmp_path / "daskimg-writer").rglob("*.partial"))


def test_index_of_a_set_written_shuffled_is_named_when_fed(tmp_path, caplog):
    # the set was stored shuffled, then fed from its files with "index" and the predictions
    # written back into the store by it: 13 of 14 landed on other samples, without a word
    import logging

    files = di.testing.make_image_folder(tmp_path / "photos", n=12, size=(8, 8))
    ds = di.from_folder(tmp_path / "photos", size=(8, 8))
    p = di.to_zarr(ds, tmp_path / "s.zarr.zip")
    stored = di.open_zarr(p).paths.tolist()
    assert sorted(stored) == sorted(ds.paths.tolist()) and stored != ds.paths.tolist()
    said = _said_when_fed(caplog, ds, ("images", "index"))
    assert "written to" in said and "s.zarr.zip" in said
    assert "BatchIterator(" in said  # says to feed from the store
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        for _ in di.BatchIterator(p, batch_size=5, arrays=("images", "index")):
            pass
        ordered = di.from_folder(tmp_path / "photos", size=(8, 8))
        di.to_zarr(ordered, tmp_path / "o.zarr.zip", order="source")
        for _ in di.BatchIterator(ordered, batch_size=5, arrays=("images", "index")):
            pass
    # the store's own rows; a set stored in its order here
    assert "written to" not in caplog.text and "read from files" not in caplog.text
    assert len(files) == 12
    # a take of a store's set gives its rows in that store: in a new store, even written in
    # the take's order, they are other rows
    part = di.open_zarr(p).take([7, 2, 9])
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        batch = next(iter(di.BatchIterator(part, batch_size=3, arrays=("index",))))
    assert sorted(batch[0].tolist()) == [2, 7, 9] and "written to" not in caplog.text
    q = di.to_zarr(part, tmp_path / "part.zarr.zip", order="source")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        next(iter(di.BatchIterator(part, batch_size=3, arrays=("index",))))
    assert "written to" in caplog.text and "part.zarr.zip" in caplog.text
    assert len(di.open_zarr(q)) == 3


def test_index_of_a_set_read_again_from_files_is_named_when_fed(tmp_path, caplog):
    # ingested by one script, predicted by another from the set read again from the same
    # files: its "index" (its own rows) wrote 38 of 40 predictions onto other samples of
    # the shuffled store, without a word (the warning above knew only this process's writes)

    di.testing.make_image_folder(tmp_path / "photos", n=12, size=(8, 8))
    p = di.to_zarr(di.from_folder(tmp_path / "photos", size=(8, 8)), tmp_path / "s.zarr.zip")
    again = di.from_folder(tmp_path / "photos", size=(8, 8))  # as a later script reads it
    stored = di.open_zarr(p).paths.tolist()
    assert sorted(stored) == sorted(again.paths.tolist()) and stored != again.paths.tolist()
    said = _said_when_fed(caplog, again, ("images", "index"))
    assert "from a set read from files" in said and "its row in this set" in said
    assert "feed from the store" in said
    assert "read from files" not in _said_when_fed(caplog, again, ("images", "labels"))


def test_index_of_arrays_is_named_when_fed(tmp_path, caplog):
    # the same with a set made from arrays (or the arrays given as they are), stored by
    # one script and predicted by another from the same arrays: 57 of 60 predictions
    # landed on other samples, unsaid (only a set read from files warned)
    images = np.empty((30, 4, 4, 3), np.uint8)
    images[:] = np.arange(30)[:, None, None, None]
    ds = di.ImageSet(images, labels=np.arange(30) % 3, classes=["a", "b", "c"])
    p = di.to_zarr(ds, tmp_path / "s.zarr.zip", chunks=8)
    stored = np.asarray(di.open_zarr(p).images)[:, 0, 0, 0]
    assert sorted(stored) == list(range(30)) and stored.tolist() != list(range(30))
    again = di.ImageSet(images, labels=np.arange(30) % 3, classes=["a", "b", "c"])
    said = _said_when_fed(caplog, again, ("images", "index"))
    assert "a set of 30 samples made from arrays" in said and "its row in this set" in said
    assert "feed from the store" in said
    given = _said_when_fed(caplog, {"images": images[:29]}, ("images", "index"))
    assert "arrays given as they are (29 rows)" in given and "feed from the store" in given
    # fed from the store, or without "index": nothing said
    assert "its row in this set" not in _said_when_fed(caplog, again, ("images", "labels"))
    assert "its row in this set" not in _said_when_fed(caplog, p, ("images", "index"))


def _said_when_fed(caplog, source, arrays) -> str:
    """What daskimg logs (warnings) while an epoch of ``source`` is fed with ``arrays``."""
    import logging

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        for _ in di.BatchIterator(source, batch_size=5, arrays=arrays):
            pass
    return caplog.text
