"""to_zarr decoding in forked worker processes (daskimg.store.procpool): same store, errors
named, nothing left behind when a worker or the writer dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from conftest import plain_group
from PIL import Image

import daskimg as di
import daskimg.store.procpool as procpool
import daskimg.store.shardwrite as shardwrite
import daskimg.store.write as write_mod
from daskimg.errors import DaskImgError, DecodeError, IncompleteStoreError, StoreLockedError
from daskimg.store.location import write_lock
from daskimg.store.zipbuild import ZipBuilder

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="worker processes are forked on Linux only"
)


@pytest.fixture
def pids_seen(tmp_path, monkeypatch):
    """Record the process that decodes each chunk (the patch is inherited by forked workers)."""
    log = tmp_path / "pids.txt"
    real = shardwrite.block_arrays

    def spy(*args, **kwargs):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(shardwrite, "block_arrays", spy)
    monkeypatch.setattr(procpool, "block_arrays", spy)  # its own: decoding into the slots
    return lambda: [int(x) for x in log.read_text().split()] if log.exists() else []


def _arrays(path):
    g = plain_group(path)
    return {k: np.asarray(g[k][...]) for k in g.array_keys()}


def test_default_write_uses_worker_processes_and_matches_in_process(
    image_folder, tmp_path, pids_seen
):
    ds = di.from_folder(image_folder, size=(32, 40))
    with dask.config.set(num_workers=2):
        forked = di.to_zarr(ds, tmp_path / "forked.zarr.zip", chunks=4)
    workers = set(pids_seen())
    assert workers and os.getpid() not in workers  # every chunk decoded in another process
    with dask.config.set(scheduler="sync"):
        here = di.to_zarr(ds, tmp_path / "here.zarr.zip", chunks=4)
    assert os.getpid() in set(pids_seen())
    a, b = _arrays(forked), _arrays(here)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # and the pixels are Pillow's decode of each file (no resize: same size)
    store = di.open_zarr(forked)
    for i, p in enumerate(store.paths):
        want = np.asarray(Image.open(image_folder / p).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(store.images[i]), want, err_msg=p)


def test_folder_store_and_masks_from_workers(tmp_path, pids_seen):
    root, masks = tmp_path / "src", tmp_path / "masks"
    files = di.testing.make_image_folder(root, n=20, size=(16, 12), classes=("a",))
    for i, f in enumerate(sorted(files)):
        m = (np.arange(16 * 12).reshape(16, 12) + i) % 3
        (masks / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(m.astype(np.uint8)).save(masks / "a" / f"{f.stem}.png")
    ds = di.from_folder(root, size=(16, 12), masks=masks)
    with dask.config.set(num_workers=2):
        out = di.to_zarr(ds, tmp_path / "m.zarr", chunks=3, order="source")
    assert os.getpid() not in set(pids_seen())
    got = _arrays(out)
    paths = list(di.open_zarr(out).paths)
    assert len(paths) == 20
    for i, rel in enumerate(paths):
        f = root / rel
        want_mask = np.asarray(Image.open(masks / "a" / f"{f.stem}.png"))
        np.testing.assert_array_equal(got["masks"][i], want_mask, err_msg=rel)
        np.testing.assert_array_equal(
            got["images"][i], np.asarray(Image.open(f).convert("RGB")), err_msg=rel
        )


def test_explicit_scheduler_or_one_worker_stays_in_this_process(image_folder, tmp_path, pids_seen):
    ds = di.from_folder(image_folder, size=(32, 40))
    with dask.config.set(scheduler="threads"):
        di.to_zarr(ds, tmp_path / "t.zarr.zip", chunks=4)
    with dask.config.set(num_workers=1):
        di.to_zarr(ds, tmp_path / "one.zarr.zip", chunks=4)
    assert set(pids_seen()) == {os.getpid()}


def test_bad_file_in_a_worker_is_named_and_nothing_is_left(image_folder, tmp_path):
    bad = image_folder / "bee" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "x.zarr.zip"
    with dask.config.set(num_workers=2), pytest.raises(DecodeError, match=r"broken\.png"):
        di.to_zarr(di.from_folder(image_folder, size=(32, 40)), out, chunks=4)
    assert sorted(os.listdir(tmp_path)) == ["src"]  # no store, no staging, no lock


def test_skipping_bad_files_in_workers_matches_in_process(
    image_folder, tmp_path, pids_seen, caplog
):
    for i, name in enumerate(["ant/broken.png", "cat/zz_empty.png", "bee/bad.jpg"]):
        (image_folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (40 * i))
    ds = di.from_folder(image_folder, size=(32, 40), on_error="skip")
    with dask.config.set(num_workers=2), caplog.at_level("WARNING", logger="daskimg"):
        forked = di.to_zarr(ds, tmp_path / "f.zarr.zip", chunks=4)
    assert os.getpid() not in set(pids_seen())
    # what the workers logged reaches this process's handlers
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "daskimg")
    for name in ("broken.png", "zz_empty.png", "bad.jpg"):
        assert "skipping" in logged and name in logged
    with dask.config.set(scheduler="sync"):
        here = di.to_zarr(ds, tmp_path / "h.zarr.zip", chunks=4)
    a, b = _arrays(forked), _arrays(here)
    assert a.keys() == b.keys() and len(a["images"]) == 24
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    store = di.open_zarr(forked)
    assert sorted(p for p, _ in store.skipped) == [
        "ant/broken.png",
        "bee/bad.jpg",
        "cat/zz_empty.png",
    ]
    for i, p in enumerate(store.paths):
        want = np.asarray(Image.open(image_folder / p).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(store.images[i]), want, err_msg=p)


def test_a_worker_that_dies_fails_the_write_naming_its_files(image_folder, tmp_path, monkeypatch):
    ds = di.from_folder(image_folder, size=(32, 40))
    victim = str(ds.row_source.paths[13])  # a file of the 4th chunk (order="source")
    real = shardwrite.block_arrays

    def crash(paths, *args, **kwargs):
        if victim in [str(p) for p in paths]:
            os._exit(7)  # as a decoder crash or the OOM killer would
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(shardwrite, "block_arrays", crash)
    monkeypatch.setattr(procpool, "block_arrays", crash)
    out = tmp_path / "x.zarr.zip"
    with dask.config.set(num_workers=2), pytest.raises(DaskImgError, match="worker process") as e:
        di.to_zarr(ds, out, chunks=4, order="source")
    first, last = (str(p) for p in ds.row_source.paths[12:16:3])
    assert f"{first} .. {last}" in str(e.value)  # the dead worker's chunk is among those named
    assert sorted(os.listdir(tmp_path)) == ["src"]
    monkeypatch.setattr(shardwrite, "block_arrays", real)
    monkeypatch.setattr(procpool, "block_arrays", real)
    with dask.config.set(num_workers=2):
        di.to_zarr(ds, out, chunks=4)  # the lock is free, the next write works
    assert len(di.open_zarr(out)) == 24


def test_forked_child_does_not_keep_the_write_lock(tmp_path):
    """A child forked while a write holds the lock (a decode worker) closes its copy: when
    the writer is killed, the next writer gets the lock although the child lives on."""
    target = str(tmp_path / "x.zarr.zip")
    script = textwrap.dedent(
        f"""
        import os, time
        from daskimg.store.location import write_lock
        with write_lock({target!r}):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            print(pid, flush=True)
            time.sleep(60)
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(writer.stdout.readline())
    try:
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        os.kill(child, 0)  # the child still runs
        with write_lock(target):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


_KILLED_WRITER = """
import json, os, sys, time
import dask
import daskimg as di
import daskimg.store.procpool as pp
import daskimg.store.shardwrite as sw

log, src, out = sys.argv[1:]
real = sw.block_arrays

def slow(*a, **k):
    with open(log, "a") as fh:
        fh.write(json.dumps(os.getpid()) + "\\n")
    time.sleep(60)
    return real(*a, **k)

sw.block_arrays = pp.block_arrays = slow
with dask.config.set(num_workers=2):
    di.to_zarr(di.from_folder(src, size=(32, 40)), out, chunks=4)
"""


def test_killed_writer_leaves_no_workers_no_lock_and_no_store(image_folder, tmp_path):
    log, out = tmp_path / "pids.txt", tmp_path / "x.zarr.zip"
    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(log), str(image_folder), str(out)]
    )
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().split()) >= 2):
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.05)
        workers = [json.loads(x) for x in log.read_text().split()]
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        deadline = time.monotonic() + 10
        for pid in workers:  # each exits when its parent is gone
            while _alive(pid):
                assert time.monotonic() < deadline, f"worker {pid} outlived the killed writer"
                time.sleep(0.05)
    finally:
        if writer.poll() is None:
            writer.kill()
    with pytest.raises(IncompleteStoreError, match="never finished"):
        di.open_zarr(out)
    with write_lock(str(out)):  # free
        pass
    with dask.config.set(num_workers=2):
        di.to_zarr(di.from_folder(image_folder, size=(32, 40)), out, chunks=4)
    assert len(di.open_zarr(out)) == 24


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_lock_is_held_during_a_forked_write(image_folder, tmp_path, monkeypatch):
    """The parent still holds the lock while its workers decode (they only drop copies)."""
    out = str(tmp_path / "x.zarr.zip")
    seen = []
    real = procpool.write_chunks

    def check(*args, **kwargs):
        with pytest.raises(StoreLockedError), write_lock(out):
            pass
        seen.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(write_mod, "write_chunks", check)
    with dask.config.set(num_workers=2):
        di.to_zarr(di.from_folder(image_folder, size=(32, 40)), out, chunks=4)
    assert seen == [True]


def test_cli_ingest_decodes_in_workers_unless_told_otherwise(image_folder, tmp_path, pids_seen):
    from daskimg.cli import main

    args = ["ingest", str(image_folder), str(tmp_path / "a"), "--size", "32", "40"]
    assert main([*args, "--chunk", "2", "--workers", "2", "--valid", "0", "--test", "0"]) == 0
    assert os.getpid() not in set(pids_seen())
    forked = _arrays(tmp_path / "a" / "train.zarr.zip")
    args[2] = str(tmp_path / "b")
    flags = ["--chunk", "2", "--scheduler", "threads", "--valid", "0", "--test", "0"]
    assert main([*args, *flags]) == 0
    assert os.getpid() in set(pids_seen())
    threaded = _arrays(tmp_path / "b" / "train.zarr.zip")
    for k in forked:
        np.testing.assert_array_equal(forked[k], threaded[k], err_msg=k)


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_cli_workers_must_be_positive(image_folder, tmp_path, bad, capsys):
    from daskimg.cli import main

    with pytest.raises(SystemExit):
        main(
            ["ingest", str(image_folder), str(tmp_path / "o"), "--size", "8", "8", "--workers", bad]
        )
    assert "--workers" in capsys.readouterr().err


def test_skip_keeps_each_blocks_ok_when_slots_are_reused(tmp_path, monkeypatch):
    """``ok`` (which rows decoded) is copied before its slot is reused: put in a slot and
    overwritten by a later block's masks, bad files were stored (review finding)."""
    monkeypatch.setattr(procpool, "_SMALL", 1)  # every array through the slots
    root, masks = tmp_path / "src", tmp_path / "masks"
    files = di.testing.make_image_folder(root, n=24, size=(16, 12), classes=("a",))
    (masks / "a").mkdir(parents=True)
    for f in files:
        Image.fromarray(np.full((16, 12), len(f.stem) % 5, np.uint8)).save(
            masks / "a" / f"{f.stem}.png"
        )
    for name in ("a/0_bad1.png", "a/0_bad2.png"):  # first in the sorted order: chunk 0
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
        Image.fromarray(np.zeros((16, 12), np.uint8)).save(masks / name)
    ds = di.from_folder(root, size=(16, 12), masks=masks, on_error="skip")
    with dask.config.set(num_workers=2):
        forked = di.to_zarr(ds, tmp_path / "f.zarr.zip", chunks=3, order="source")
    with dask.config.set(scheduler="sync"):
        here = di.to_zarr(ds, tmp_path / "h.zarr.zip", chunks=3, order="source")
    a, b = _arrays(forked), _arrays(here)
    assert len(a["images"]) == 24 and not any("bad" in str(p) for p in a["paths"])
    for k in b:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


_FORK_WHILE_DECODING = """
import sys, threading, time
import dask
import daskimg as di
from daskimg.read import fileio

src, out = sys.argv[1:]
held = threading.Event()

def hold():  # another thread of the program inside a decode when to_zarr forks
    with fileio.WARNINGS_LOCK:
        held.set()
        time.sleep(1.5)

threading.Thread(target=hold).start()
held.wait()
with dask.config.set(num_workers=2):
    di.to_zarr(di.from_folder(src, size=(32, 40)), out, chunks=4)
print(len(di.open_zarr(out)))
"""


def test_fork_while_another_thread_decodes_does_not_hang(image_folder, tmp_path):
    out = str(tmp_path / "x.zarr.zip")
    done = subprocess.run(
        [sys.executable, "-c", _FORK_WHILE_DECODING, str(image_folder), out],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["24"]


def test_an_error_stops_the_workers_at_once_and_is_the_error_raised(
    image_folder, tmp_path, monkeypatch
):
    """A write that fails (a full disk) raises its own error, not one from closing the
    slots, and does not wait for the chunks the workers are decoding."""
    real = shardwrite.block_arrays
    first = str(di.from_folder(image_folder, size=(32, 40)).row_source.paths[0])

    def slow(paths, *args, **kwargs):
        if first not in [str(p) for p in paths]:
            time.sleep(60)  # every chunk but the first
        return real(paths, *args, **kwargs)

    def full(self, key, pieces, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shardwrite, "block_arrays", slow)
    monkeypatch.setattr(procpool, "block_arrays", slow)
    monkeypatch.setattr(ZipBuilder, "put", full)
    t = time.monotonic()
    with dask.config.set(num_workers=2), pytest.raises(OSError, match="No space left") as e:
        di.to_zarr(di.from_folder(image_folder, size=(32, 40)), tmp_path / "x.zarr.zip",
                   chunks=4, shard_chunks=1, order="source")  # fmt: skip
    assert not isinstance(e.value, BufferError)
    assert time.monotonic() - t < 40  # not the 60 s a decoding worker would take
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_workers_that_cannot_start_are_an_error_and_nothing_waits(
    image_folder, tmp_path, monkeypatch
):
    import multiprocessing

    real, calls = os.fork, []

    def second_fails():
        calls.append(1)
        if len(calls) == 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real()

    monkeypatch.setattr(os, "fork", second_fails)
    with (
        dask.config.set(num_workers=2),
        pytest.raises(DaskImgError, match="could not start 2 worker processes"),
    ):
        di.to_zarr(di.from_folder(image_folder, size=(32, 40)), tmp_path / "x.zarr.zip", chunks=4)
    monkeypatch.setattr(os, "fork", real)
    deadline = time.monotonic() + 10
    while multiprocessing.active_children():  # the one that started exits
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_workers_that_fail_to_start_say_so(image_folder, tmp_path, monkeypatch):
    # the start of the workers is not waited for: a worker whose set-up fails (here the
    # allocator setting, as a thread limit would) breaks the pool at the first chunk, and
    # the error says the workers may not have started, not only that a decoder crashed
    def fails(size):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(procpool, "keep_freed_buffers", fails)  # runs in the forked workers
    with (
        dask.config.set(num_workers=2),
        pytest.raises(DaskImgError, match="could not start") as e,
    ):
        di.to_zarr(di.from_folder(image_folder, size=(32, 40)), tmp_path / "x.zarr.zip", chunks=4)
    assert "num_workers=1" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_a_write_forks_its_workers_after_the_last_write_s_pool_has_ended(
    image_folder, tmp_path, monkeypatch
):
    # a finished pool ends on a thread of its own while the store is published; the next
    # write waits for it before it forks, so its workers never inherit (and hold) the
    # shared memory of the last write's slots
    slots_seen: list[list[bool]] = []
    pools: list[procpool._Workers] = []
    real_end, real_warm = procpool._Workers._end, procpool._warm

    def slow_end(self, **kw):
        time.sleep(0.5)
        real_end(self, **kw)

    def warm():  # called right before the slots of a write are made and its workers forked
        slots_seen.append([m.closed for p in pools for m in p.slots])
        real_warm()

    real_init = procpool._Workers.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        pools.append(self)

    monkeypatch.setattr(procpool._Workers, "_end", slow_end)
    monkeypatch.setattr(procpool, "_warm", warm)
    monkeypatch.setattr(procpool._Workers, "__init__", init)
    ds = di.from_folder(image_folder, size=(32, 40))
    with dask.config.set(num_workers=2):
        di.to_zarr(ds, tmp_path / "a.zarr.zip", chunks=4)
        di.to_zarr(ds, tmp_path / "b.zarr.zip", chunks=4)
    assert slots_seen[0] == [] and slots_seen[1] and all(slots_seen[1])
    a, b = di.open_zarr(tmp_path / "a.zarr.zip"), di.open_zarr(tmp_path / "b.zarr.zip")
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))


@pytest.mark.parametrize("kind", [".zarr.zip", ".zarr"])
def test_slots_are_reused_only_after_their_shard_is_written(tmp_path, monkeypatch, kind):
    """Chunks are written from the slots the workers put them in, each slot taken again
    once its shard is written: with a slow disk, many shards wait, slots are reused, and
    every byte still lands right."""
    root = tmp_path / "src"
    # shards of 2 chunks of 2 images: 384 KB, over what a zip keeps to write at the end
    di.testing.make_image_folder(root, n=48, size=(160, 200), classes=("a", "b"))
    ds = di.from_folder(root, size=(160, 200))
    taken = []
    real_take = procpool._Slots.take

    def counting_take(self, *, wait):
        slot = real_take(self, wait=wait)
        taken.append((self.count, slot))
        return slot

    real_write = shardwrite.write_file

    def slow_file(root_, key, pieces, **kw):
        time.sleep(0.02)
        return real_write(root_, key, pieces, **kw)

    real_member = ZipBuilder._write_member

    def slow_member(self, key, pieces):  # a slow disk: shards wait for the writer thread
        time.sleep(0.02)
        return real_member(self, key, pieces)

    monkeypatch.setattr(procpool._Slots, "take", counting_take)
    monkeypatch.setattr(ZipBuilder, "_write_member", slow_member)
    monkeypatch.setattr(shardwrite, "write_file", slow_file)
    with dask.config.set(num_workers=2):
        forked = di.to_zarr(ds, tmp_path / f"forked{kind}", chunks=2, shard_chunks=2)
    used = [slot for _, slot in taken if slot is not None]
    assert len(used) == 48 // 2 and taken[0][0] < 48 // 2  # fewer slots than chunks: reused
    with dask.config.set(scheduler="sync"):
        here = di.to_zarr(ds, tmp_path / f"here{kind}", chunks=2, shard_chunks=2)
    a, b = _arrays(forked), _arrays(here)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("codec", ["lz4", "none", "jpeg:80", "zstd"])
def test_photos_decoded_into_the_slots_make_the_bytes_of_an_in_process_write(tmp_path, codec):
    # the images are decoded into the slot, their Blosc header written before them where
    # they are kept raw: the stored bytes are those of a write in this process, every
    # codec, a short last chunk padded, chunks large enough to be probed (1.2 MB)
    root = tmp_path / "src"
    di.testing.make_photo_folder(root, n_per_class=10)
    ds = di.from_folder(root, size=(224, 224))
    with dask.config.set(num_workers=2):
        forked = di.to_zarr(ds, tmp_path / "forked.zarr", chunks=8, codec=codec)
    with dask.config.set(scheduler="sync"):
        here = di.to_zarr(ds, tmp_path / "here.zarr", chunks=8, codec=codec)
    for dirpath, _, files in os.walk(here):
        for f in files:
            if f != "zarr.json":
                mine = os.path.join(dirpath, f)
                theirs = os.path.join(forked, os.path.relpath(mine, here))
                with open(mine, "rb") as a, open(theirs, "rb") as b:
                    assert a.read() == b.read(), os.path.relpath(mine, here)
    a, b = _arrays(forked), _arrays(here)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


_FAULTS = """
import os, resource, sys
import numpy as np
from numcodecs import Blosc
from daskimg.store import shardwrite
from daskimg.store.malloc import keep_freed_buffers_if_trimmed
rows = np.random.default_rng(0).integers(0, 255, (8 * 2**20,), np.uint8)
applied = keep_freed_buffers_if_trimmed(rows.nbytes) if sys.argv[1] == "keep" else False
codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)
codec.encode(rows)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    codec.encode(rows)  # a fresh chunk-sized output each time, as a worker's encode
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_whose_environment_trims_memory_keeps_its_chunk_buffers():
    # distributed's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which switches
    # glibc's dynamic mapping threshold off: every chunk's 8 MiB output is fresh pages (the
    # kernel faults in and zeroes each 4 KiB). Oracle: the kernel's count of page faults.
    def run(mode: str, **env: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return out[0], int(out[1])

    trimmed = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    applied, kept = run("keep", **trimmed)
    not_applied, fresh = run("leave", **trimmed)
    assert (applied, not_applied) == ("True", "False")
    assert fresh > 10 * 2000  # ~2,048 pages per 8 MiB output, each time
    assert kept < fresh / 10


def test_keeping_buffers_only_when_the_environment_trims(monkeypatch):
    from daskimg.store import malloc

    for name in malloc._STATIC:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(malloc, "_DONE", {})
    calls = []
    monkeypatch.setattr(malloc, "keep_freed_buffers", lambda n: calls.append(n) or True)
    assert not malloc.keep_freed_buffers_if_trimmed(8 * 2**20)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=65536")
    assert malloc.keep_freed_buffers_if_trimmed(8 * 2**20)
    assert malloc.keep_freed_buffers_if_trimmed(4 * 2**20)  # once per process
    assert calls == [8 * 2**20]


def test_a_ctrl_c_while_the_workers_are_forked_waits_until_they_are_recorded(
    image_folder, tmp_path, monkeypatch
):
    # a Ctrl-C between a fork and the pool's record of the child left a zombie for the life
    # of the process (a notebook kernel), and one in logging's after-fork hook was swallowed:
    # it is held back while the pool forks, and raised right after, with the workers stopped
    from concurrent.futures import ProcessPoolExecutor

    handlers = []
    real = ProcessPoolExecutor.submit

    def submit(self, fn, *args, **kwargs):
        handlers.append(signal.getsignal(signal.SIGINT))
        if fn is int:  # the task that forks the workers: Ctrl-C pressed now
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # delivered to some thread, handled by the main one
        return real(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    ds = di.from_folder(image_folder, size=(32, 40))
    out = tmp_path / "out"
    out.mkdir()
    earlier = set(_zombies())  # other tests' children
    with dask.config.set(num_workers=2), pytest.raises(KeyboardInterrupt):
        di.to_zarr(ds, out / "x.zarr.zip", chunks=4)
    assert handlers[0] is not signal.default_int_handler  # held back while forking
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and let go
    assert os.listdir(out) == []  # nothing left where the store was to be
    time.sleep(0.2)
    assert set(_zombies()) - earlier == set()


def _zombies() -> list[str]:
    """This process's children that exited and were never reaped (the kernel's list)."""
    found = []
    for p in os.listdir("/proc"):
        try:
            stat = (Path("/proc") / p / "stat").read_text() if p.isdigit() else ""
        except OSError:
            continue  # gone meanwhile
        if f") Z {os.getpid()} " in stat:
            found.append(p)
    return found


def test_shards_of_many_chunks_are_copied_out_of_fewer_slots(tmp_path, monkeypatch):
    # 300 chunks a shard would need a slot (a memory map) for each chunk of several
    # shards (70,004 maps for 14,000 one-image chunks: ENOMEM past vm.max_map_count):
    # chunks are copied out of the slots instead, the store the same
    root = tmp_path / "src"
    di.testing.make_image_folder(root, n=300, size=(8, 8), classes=("a", "b"))
    ds = di.from_folder(root, size=(8, 8))
    counts = []
    real = procpool._Slots.__init__

    def counting(self, count):
        counts.append(count)
        real(self, count)

    monkeypatch.setattr(procpool._Slots, "__init__", counting)
    with dask.config.set(num_workers=2):
        forked = di.to_zarr(ds, tmp_path / "f.zarr.zip", chunks=1, shard_chunks=300)
    assert counts == [2 * procpool._AHEAD]
    with dask.config.set(scheduler="sync"):
        here = di.to_zarr(ds, tmp_path / "h.zarr.zip", chunks=1, shard_chunks=300)
    a, b = _arrays(forked), _arrays(here)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_workers_that_fail_to_start_leave_garbage_collection_as_it_was(
    image_folder, tmp_path, monkeypatch
):
    import gc

    def no_pool(*args, **kwargs):
        raise OSError(24, "Too many open files")

    def broken(*args):
        raise RuntimeError("a worker that cannot start")

    before = gc.get_freeze_count()
    ds = di.from_folder(image_folder, size=(32, 40))
    for name, fails, error in (
        ("ProcessPoolExecutor", no_pool, OSError),  # before any worker
        ("_start_worker", broken, DaskImgError),  # the workers fail as they start
    ):
        with monkeypatch.context() as m:
            m.setattr(procpool, name, fails)
            with dask.config.set(num_workers=2), pytest.raises(error):
                di.to_zarr(ds, tmp_path / "x.zarr.zip", chunks=4)
        assert gc.get_freeze_count() == before, name  # nothing left frozen out of collection


def test_two_forked_writes_at_once_unfreeze_garbage_collection_when_both_end(
    image_folder, tmp_path, monkeypatch
):
    import gc
    from concurrent.futures import ThreadPoolExecutor

    ds = di.from_folder(image_folder, size=(32, 40))
    seen = []
    real = procpool._freeze
    lock = threading.Lock()

    def watching(step):
        with lock:  # each step recorded with the state it left, in the order they ran
            real(step)
            seen.append((step, gc.get_freeze_count() > 0))

    monkeypatch.setattr(procpool, "_freeze", watching)
    before = gc.get_freeze_count()
    with dask.config.set(num_workers=2), ThreadPoolExecutor(2) as pool:
        stores = list(
            pool.map(lambda n: di.to_zarr(ds, tmp_path / f"{n}.zarr.zip", chunks=4), "ab")
        )
    a, b = (_arrays(s) for s in stores)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sorted(step for step, _ in seen) == [-1, -1, 1, 1]
    # when both were under way at once, the first to end left the objects frozen
    overlapped = [step for step, _ in seen][:2] == [1, 1]
    assert next(frozen for step, frozen in seen if step < 0) == overlapped
    assert gc.get_freeze_count() == before


@pytest.mark.parametrize("name", ["w.zarr.zip", "w.zarr"])
def test_image_chunks_are_written_from_the_workers_memory(tmp_path, monkeypatch, name):
    # each chunk's images are decoded into their slot at the place (modulo a disk block)
    # they will have in the file, so the writer hands them to the disk from there, not
    # copied: every image chunk of every shard, the first and the later ones
    import daskimg.store.directio as directio

    root = tmp_path / "src"
    di.testing.make_image_folder(root, n=40, size=(256, 256), classes=("a", "b"))
    seen = []
    real = directio.AppendFile._write_in_place

    def spy(self, view):
        done = real(self, view)
        seen.append((view.nbytes, done, self.direct))
        return done

    monkeypatch.setattr(directio.AppendFile, "_write_in_place", spy)
    ds = di.from_folder(root, size=(256, 256))
    with dask.config.set(num_workers=2):
        out = di.to_zarr(ds, tmp_path / name, chunks=8, shard_chunks=3)
    forked = [s for s in seen if s[0] >= 8 * 256 * 256 * 3]
    with dask.config.set(scheduler="sync"):
        here = di.to_zarr(ds, tmp_path / f"here-{name}", chunks=8, shard_chunks=3)
    a, b = _arrays(out), _arrays(here)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    store = di.open_zarr(out)
    for i, p in enumerate(store.paths):
        want = np.asarray(Image.open(root / p).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(store.images[i]), want, err_msg=p)
    if not forked or not all(direct for _, _, direct in forked):
        pytest.skip("this file system takes no O_DIRECT writes")
    # 5 chunks, each but its last partial block written from the slot
    assert len(forked) == 5 and all(done > size - 4096 for size, done, _ in forked), forked
