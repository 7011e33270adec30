"""Ingest on a real multi-process dask cluster, including a worker killed mid-ingest."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import dask
import numpy as np
import pytest
import store_damage as sd
from conftest import plain_group

import daskimg as di
from daskimg.errors import DaskImgError, DecodeError
from daskimg.storeinfo import verify

distributed = pytest.importorskip("distributed")


@contextlib.contextmanager
def _current_client():
    """A client of a 1-thread in-process cluster, made current with ``client.as_current()``
    only (a context variable: other threads do not inherit it), not the default one."""
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        client.as_current(),
    ):
        yield client


def _same(a, b):
    ga, gb = plain_group(a), plain_group(b)
    for name in ("images", "labels", "paths"):
        np.testing.assert_array_equal(ga[name][...], gb[name][...])
    for path in (a, b):  # each records the checksum of each of its chunks, in order
        members = sd.read_local(path)
        for name in ("images", "labels", "paths"):
            assert sd.recorded_crcs(members, name) == sd.chunk_crcs(members, name), (path, name)


@pytest.mark.slow
@pytest.mark.parametrize("direct", [None, False])
def test_process_cluster_ingest_equals_threads(tmp_path, image_folder, cluster, direct):
    """Chunks fetched straight from the workers (the default on one machine) or relayed by
    the scheduler (the client's ``direct_to_workers=False``) make the same store."""
    from daskimg.store.write import gather_direct

    ds = di.from_folder(image_folder, size=(16, 16), chunks=3)
    with dask.config.set(scheduler="threads"):
        di.to_zarr(ds, tmp_path / "local.zarr.zip", chunks=3, seed=4)
    with distributed.Client(cluster, direct_to_workers=direct) as client:
        assert gather_direct(client) is (direct is None)  # the workers are on loopback
        di.to_zarr(ds, tmp_path / "cluster.zarr.zip", chunks=3, seed=4)
    _same(tmp_path / "local.zarr.zip", tmp_path / "cluster.zarr.zip")


@pytest.mark.slow
@pytest.mark.parametrize("ext", [".zarr.zip", ".zarr"])
def test_bad_files_on_a_cluster_are_named_or_recorded(tmp_path, image_folder, cluster, ext):
    """A file that fails to decode on a worker: with ``raise`` the error names it and no
    store is left; with ``skip`` it is left out and recorded, as on threads."""
    good = next((image_folder / "bee").glob("*.png")).read_bytes()
    (image_folder / "bee" / "truncated.png").write_bytes(good[:60])
    with distributed.Client(cluster):
        out = tmp_path / f"raise{ext}"
        with pytest.raises(di.errors.DecodeError, match=r"truncated\.png"):
            di.to_zarr(di.from_folder(image_folder, size=(8, 8)), out, chunks=4)
        assert not out.exists()
        assert not [p for p in os.listdir(tmp_path) if p.startswith("raise")]
        ds = di.from_folder(image_folder, size=(8, 8), on_error="skip")
        di.to_zarr(ds, tmp_path / f"skip{ext}", chunks=4)
    back = di.open_zarr(tmp_path / f"skip{ext}")
    assert [p for p, _ in back.skipped] == ["bee/truncated.png"]
    assert len(back) == 24 and "bee/truncated.png" not in list(back.paths)
    assert verify(tmp_path / f"skip{ext}") == []


@pytest.mark.parametrize(
    ("setting", "workers", "expected"),
    [
        (None, ["tcp://127.0.0.1:4001", "tcp://[::1]:4002", "inproc://10.0.0.2/7/1"], True),
        (None, ["tcp://localhost:4001"], True),
        (None, ["tcp://127.0.0.1:4001", "tcp://10.0.0.7:4002"], False),  # one elsewhere
        (None, ["tls://node7.cluster:8786"], False),
        (None, [], False),
        (True, ["tcp://10.0.0.7:4002"], True),  # the client's own setting wins
        (False, ["tcp://127.0.0.1:4001"], False),
    ],
)
def test_results_come_straight_from_workers_only_on_this_machine(setting, workers, expected):
    from daskimg.store.write import gather_direct

    class Client:
        direct_to_workers = setting

        def scheduler_info(self):
            return {"workers": {a: {} for a in workers}}

    assert gather_direct(Client()) is expected


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_cluster_zip_holds_every_array_as_threads_do(tmp_path, cluster, codec):
    """The client puts the shards together from the chunks the workers send: images,
    source_size and masks (decoded together), a lazy float column (encoded on its own) and
    the in-memory columns, with raw ("none") chunks too; partial last chunk and shard."""
    from PIL import Image

    src, masks = tmp_path / "src", tmp_path / "masks"
    di.testing.make_image_folder(src, n=23, size=(20, 24), classes=("a", "b"), seed=5)
    for p in sorted(src.rglob("*.png")):
        rel = p.relative_to(src)
        (masks / rel.parent).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(len(str(rel)))
        Image.fromarray(rng.integers(0, 4, (20, 24), dtype=np.uint8)).save(masks / rel)
    ds = di.from_folder(src, size=(16, 16), masks=masks)
    score = dask.array.from_array(np.linspace(0, 1, len(ds) * 3).reshape(-1, 3), chunks=5)
    ds = di.ImageSet(
        ds.images, ds.labels, classes=ds.classes, paths=ds.paths, row_source=ds.row_source,
        columns={**ds.columns, "score": score},
    )  # fmt: skip
    kw = {"chunks": 3, "shard_chunks": 2, "seed": 2, "codec": codec}
    with dask.config.set(scheduler="threads"):
        di.to_zarr(ds, tmp_path / "local.zarr.zip", **kw)
    with distributed.Client(cluster):
        di.to_zarr(ds, tmp_path / "cluster.zarr.zip", **kw)
    ga, gb = plain_group(tmp_path / "local.zarr.zip"), plain_group(tmp_path / "cluster.zarr.zip")
    names = sorted(name for name, _ in ga.arrays())
    assert {"images", "labels", "paths", "source_size", "masks", "score"} <= set(names)
    assert names == sorted(name for name, _ in gb.arrays())
    for name in names:
        np.testing.assert_array_equal(ga[name][...], gb[name][...], err_msg=name)
    np.testing.assert_array_equal(np.sort(gb["score"][...], axis=0), score.compute())
    # byte for byte as threads write them: the partial last chunk padded with zeros (as
    # zarr pads it), though a worker decodes each chunk into a buffer it does not clear
    la, lb = (
        sd.read_local(tmp_path / "local.zarr.zip"),
        sd.read_local(tmp_path / "cluster.zarr.zip"),
    )
    for name in ("images", "masks", "source_size"):
        keys = sorted(k for k in la if k.startswith(f"{name}/c/"))
        assert keys and keys == sorted(k for k in lb if k.startswith(f"{name}/c/")), name
        assert [k for k in keys if la[k] != lb[k]] == [], name


def _private_mount_works(path) -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    cmd = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none '{path}'"]
    return subprocess.run(cmd, capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("ext", [".zarr", ".zarr.zip"])
@pytest.mark.parametrize("how", ["default", "client", "client.get"])
def test_cluster_workers_that_cannot_see_the_output_folder(tmp_path, ext, how):
    """Workers on other machines: each worker process gets a private, empty mount over the
    output folder (as a worker elsewhere has no such folder), but reads the photos. The
    store must be whole anyway: the client writes every shard (a worker writing a shard
    into its own disk would leave a store that says complete and misses it). The cluster
    chosen as dask's docs allow, dask.config.set(scheduler=client or client.get), was taken
    for a local scheduler: a zip failed to serialise, a folder's shards went to the
    workers' disks ("shard 0 is missing; the store is damaged")."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "here").touch()
    if not _private_mount_works(out):
        pytest.skip("no private mounts here (unshare -m needs root or user namespaces)")
    src = tmp_path / "src"
    di.testing.make_image_folder(src, n=30, size=(20, 24), classes=("a", "b"), seed=6)
    ds = di.from_folder(src, size=(16, 16))
    kw = {"chunks": 3, "shard_chunks": 2, "seed": 3}
    with dask.config.set(scheduler="threads"):
        di.to_zarr(ds, tmp_path / f"local{ext}", **kw)
    workers = []
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as cluster:
        for _ in range(2):
            worker = (
                f"mount -t tmpfs none '{out}' && exec '{sys.executable}' -m "
                f"distributed.cli.dask_worker {cluster.scheduler_address} --nthreads 1 "
                "--no-dashboard --no-nanny"
            )
            workers.append(subprocess.Popen(["unshare", "-m", "sh", "-c", worker]))
        try:
            # a client chosen by dask.config is not the default one here (as the command
            # line's --scheduler HOST:PORT makes it): "No clients found" while gathering
            with distributed.Client(cluster, set_as_default=how == "default") as client:
                client.wait_for_workers(2, timeout=60)
                # the workers see the photos, not what this process has in the output folder
                seen = client.run(os.path.exists, str(out / "here"))
                assert list(seen.values()) == [False, False]
                assert all(client.run(os.path.exists, str(src)).values())
                chosen = {"default": None, "client": client, "client.get": client.get}[how]
                with dask.config.set(scheduler=chosen):
                    di.to_zarr(ds, out / f"s{ext}", **kw)
        finally:
            for w in workers:
                w.terminate()
                w.wait(30)
    assert verify(out / f"s{ext}") == []
    ga, gb = plain_group(tmp_path / f"local{ext}"), plain_group(out / f"s{ext}")
    for name in ("images", "labels", "paths", "source_size"):
        np.testing.assert_array_equal(ga[name][...], gb[name][...], err_msg=name)


@pytest.mark.slow
def test_worker_killed_mid_ingest_is_survived(tmp_path, monkeypatch):
    # enough work that the kill lands while shards are being decoded and written
    src = tmp_path / "src"
    di.testing.make_image_folder(src, n=480, size=(96, 128), classes=("a", "b", "c"), seed=3)
    ds = di.from_folder(src, size=(64, 64), chunks=4)
    with dask.config.set(scheduler="threads"):
        di.to_zarr(ds, tmp_path / "local.zarr.zip", chunks=4, shard_chunks=1, seed=1)
    target = tmp_path / "cluster.zarr.zip"
    # the client appends the shards the workers send to the zip being built: count them
    # (the file itself grows 8 MiB at a time, past the page cache)
    from daskimg.store.zipbuild import ZipBuilder

    images_in = []
    real_put = ZipBuilder.put

    def counting_put(self, key, pieces, **kw):
        real_put(self, key, pieces, **kw)
        if key.startswith("images/"):
            images_in.append(key)

    monkeypatch.setattr(ZipBuilder, "put", counting_put)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        done = threading.Event()
        killed = []

        def kill_one_mid_ingest() -> None:
            while not done.is_set():
                if len(images_in) >= 3:  # a few of the 120 shards are in
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(len(images_in))
                    return
                time.sleep(0.005)

        killer = threading.Thread(target=kill_one_mid_ingest)
        killer.start()
        try:
            di.to_zarr(ds, target, chunks=4, shard_chunks=1, seed=1)
        finally:
            done.set()
            killer.join()
    assert killed, "the worker was not killed before the ingest ended; make the ingest longer"
    assert killed[0] < 60  # the worker died with most of the store still to come
    _same(tmp_path / "local.zarr.zip", target)


def test_processes_scheduler_ingest_equals_threads(tmp_path, image_folder):
    """The processes scheduler returns results only at the end: its workers write a folder,
    packed into the zip afterwards; the same store as the threaded one-pass zip."""
    ds = di.from_folder(image_folder, size=(16, 16), chunks=3)
    with dask.config.set(scheduler="threads"):
        di.to_zarr(ds, tmp_path / "local.zarr.zip", chunks=3, shard_chunks=2, seed=4)
    with dask.config.set(scheduler="processes", num_workers=2):
        di.to_zarr(ds, tmp_path / "procs.zarr.zip", chunks=3, shard_chunks=2, seed=4)
    _same(tmp_path / "local.zarr.zip", tmp_path / "procs.zarr.zip")
    assert not (tmp_path / "procs.zarr.zip.partial").exists()


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_workers_dying_on_a_file_name_its_chunk_files(tmp_path, on_error):
    # a 9000 x 9000 PNG (0.3 MB on disk, 243 MB decoded) kills every worker that decodes it
    # (memory limit): the client's KilledWorker named a task key, no file (with skip too:
    # a file that kills its decoder does not fail to decode, so it cannot be skipped)
    from PIL import Image

    src = tmp_path / "src"
    di.testing.make_image_folder(src, n=8, classes=("a", "b"))
    Image.new("RGB", (9000, 9000), (10, 200, 30)).save(src / "a" / "huge.png")
    ds = di.from_folder(src, size=(32, 32), on_error=on_error)
    out = tmp_path / "out.zarr.zip"
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, memory_limit="350MB",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster),
        pytest.raises(distributed.scheduler.KilledWorker) as caught,
    ):  # fmt: skip
        di.to_zarr(ds, out, chunks=4, order="source")  # huge.png: sample 4, chunk 1
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "the workers died" in notes and "chunk 1: " in notes and "huge.png" in notes
    assert not out.exists()


@pytest.mark.slow
def test_arrays_persisted_on_a_cluster_are_refused_in_dataloader_workers(tmp_path, cluster):
    # a DataLoader worker computed them on its own threads and failed with dask's "Missing
    # dependency ('imread-...')"; in this process they are fed as they are (numpy's oracle)
    torch = pytest.importorskip("torch")
    from daskimg.torch import TorchDataset

    images = np.arange(24 * 4 * 4 * 3, dtype=np.uint32).astype(np.uint8).reshape(24, 4, 4, 3)
    with distributed.Client(cluster):
        held = dask.array.from_array(images, chunks=(4, 4, 4, 3)).persist()
        ds = TorchDataset((held, np.arange(24)), batch_size=4, shuffle=False)
        fed = list(torch.utils.data.DataLoader(ds, batch_size=None))
        np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in fed]), images)
        with pytest.raises(
            Exception, match=r"array 'images' is persisted on a distributed cluster"
        ):
            list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))
        # Keras's worker processes alike (they failed with dask's "Missing dependency");
        # its threads read them as they are
        pytest.importorskip("keras")
        from daskimg.keras import KerasDataset

        kw = {"batch_size": 4, "shuffle": False, "scale": None}
        threads = KerasDataset((held, np.arange(24)), workers=2, **kw)
        np.testing.assert_array_equal(threads[1][0], images[4:8])
        with pytest.raises(ValueError, match=r"'images' is persisted .*use_multiprocessing"):
            KerasDataset((held, np.arange(24)), workers=2, use_multiprocessing=True, **kw)


def test_a_set_persisted_on_a_cluster_since_closed_is_named_not_missing_dependency(tmp_path):
    # to_zarr and the feed failed with dask's "Missing dependency ('array-...')" naming
    # none of the user's arrays; now both name the array and say why, and nothing is written
    images = np.arange(40 * 4 * 4 * 3, dtype=np.uint32).astype(np.uint8).reshape(40, 4, 4, 3)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        held = dask.array.from_array(images, chunks=(10, 4, 4, 3)).persist()
        ds = di.ImageSet(held, np.arange(40) % 2, classes=["a", "b"])
        fed = list(di.BatchIterator(ds, batch_size=8, shuffle=False))  # while it runs: fed
        np.testing.assert_array_equal(np.concatenate([b[0] for b in fed]), images)
    said = r"array 'images' was persisted on a dask.distributed cluster .* client is closed"
    with pytest.raises(DaskImgError, match=said):
        di.to_zarr(ds, tmp_path / "x.zarr.zip")
    assert not (tmp_path / "x.zarr.zip").exists()
    with pytest.raises(DaskImgError, match=said):
        list(di.BatchIterator(ds, batch_size=8, shuffle=False))
    if importlib.util.find_spec("matplotlib") is not None:  # (no extra in the lowest run)
        with pytest.raises(DaskImgError, match=said):
            ds.show(n=4)  # (its grid computes the images too)


def test_persisted_chunks_still_there_are_written_and_another_clients_are_named(tmp_path):
    # refused only after a computation fails: the same keys persisted again by a new
    # client, or only an unneeded block cancelled, are written as they are (pixels
    # oracle); a client that is not the default scheduler is named, not "Missing dependency"
    images = np.zeros((60, 4, 4, 3), np.uint8)
    images[..., 0] = np.arange(60)[:, None, None]
    lazy = dask.array.from_array(images, chunks=(10, 4, 4, 3))
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as first:
            held = lazy.persist()
            distributed.wait(held)
            first.cancel([v for v in dict(held.__dask_graph__()).values() if v.key[1] == 0])
            part = di.to_zarr(
                di.ImageSet(held[30:], np.arange(30)), tmp_path / "p.zarr.zip", order="source"
            )
            np.testing.assert_array_equal(plain_group(part)["images"][:], images[30:])
        with distributed.Client(cluster):
            kept = lazy.persist()  # the same keys, again (held while it is written)
            distributed.wait(kept)
            again = di.to_zarr(
                di.ImageSet(held, np.arange(60)), tmp_path / "a.zarr.zip", order="source"
            )
            np.testing.assert_array_equal(plain_group(again)["images"][:], images)
        with distributed.Client(cluster, set_as_default=False) as aside:
            elsewhere = aside.persist(lazy)
            with pytest.raises(DaskImgError, match=r"'images' is persisted on a .* not the sch"):
                di.to_zarr(di.ImageSet(elsewhere, np.arange(60)), tmp_path / "e.zarr.zip")
            with pytest.raises(DaskImgError, match=r"'images' is persisted on a .* not the sch"):
                list(di.BatchIterator(di.ImageSet(elsewhere, np.arange(60)), batch_size=8))
            with dask.config.set(scheduler=aside):
                fine = di.to_zarr(
                    di.ImageSet(elsewhere, np.arange(60)), tmp_path / "f.zarr.zip", order="source"
                )
            np.testing.assert_array_equal(plain_group(fine)["images"][:], images)


def test_feeds_run_on_a_client_made_current_with_as_current():
    # client.as_current() makes a client current in this thread's context only: the
    # feed's reading threads found none ("Requested dask.distributed scheduler but no
    # Client active"), and a set persisted there was refused advising as_current()
    images = np.zeros((40, 4, 4, 3), np.uint8)
    images[..., 0] = np.arange(40)[:, None, None]
    lazy = dask.array.from_array(images, chunks=(8, 4, 4, 3)).map_blocks(lambda b: b + 0)
    labels = np.arange(40) % 3
    with (
        _current_client() as client,
    ):
        persisted = client.persist(lazy)
        for source in (lazy, persisted):
            ds = di.ImageSet(source, labels, classes=["a", "b", "c"])
            for _ in range(2):  # two epochs
                got = list(di.BatchIterator(ds, batch_size=8, seed=0))
                seen = np.concatenate([b[0][:, 0, 0, 0] for b in got])
                assert sorted(seen.tolist()) == list(range(40))  # the pixels are the ids
                for x, y in got:
                    np.testing.assert_array_equal(y, labels[x[:, 0, 0, 0]])
        keras_ds = pytest.importorskip("daskimg.keras").KerasDataset(
            di.ImageSet(lazy, labels, classes=["a", "b", "c"]), batch_size=8, scale=None
        )
        xs = np.concatenate([keras_ds[i][0][:, 0, 0, 0] for i in range(len(keras_ds))])
        assert sorted(xs.tolist()) == list(range(40))


def test_skip_ingest_runs_on_a_client_made_current_with_as_current(tmp_path):
    # to_zarr(on_error="skip") decodes a window of blocks ahead on a thread of its own; a
    # client made current with client.as_current() (a context variable, which threads do
    # not inherit) was not found there: "Requested dask.distributed scheduler but no
    # Client active", and nothing was written
    from PIL import Image

    src = tmp_path / "src"
    for c in ("cat", "dog"):
        (src / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((12, 12, 3), 40 * i + (c == "dog"), np.uint8)).save(
                src / c / f"{i}.png"
            )
    (src / "cat" / "bad.png").write_bytes(b"not an image")
    with (
        _current_client(),
    ):
        ds = di.from_folder(src, size=(12, 12), on_error="skip")
        di.to_zarr(ds, tmp_path / "out.zarr.zip", order="source")
    g = plain_group(tmp_path / "out.zarr.zip")
    paths = g["paths"][...].tolist()
    assert sorted(paths) == sorted(f"{c}/{i}.png" for c in ("cat", "dog") for i in range(5))
    for p, img in zip(paths, g["images"][...], strict=True):
        np.testing.assert_array_equal(img, np.asarray(Image.open(src / p).convert("RGB")))
    assert [os.path.basename(p) for p, _ in di.open_zarr(tmp_path / "out.zarr.zip").skipped] == [
        "bad.png"
    ]


def test_a_failed_cluster_write_raises_its_own_error_when_the_cancel_fails(tmp_path, monkeypatch):
    # a cluster closed mid-write: cancelling the write's futures raised "Client is closed.
    # Can't send cancel-keys message", which replaced the error that said what happened
    from PIL import Image

    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(src / f"{i}.png")
    (src / "bad.png").write_bytes(b"not an image")

    def closed(self, *args, **kwargs):
        raise RuntimeError("Client is closed. Can't send cancel-keys message")

    monkeypatch.setattr(distributed.Client, "cancel", closed)
    with (
        _current_client(),
        pytest.raises(DecodeError, match=r"bad\.png"),
    ):
        di.to_zarr(di.from_folder(tmp_path / "src", size=(8, 8)), tmp_path / "o.zarr.zip")
    assert not (tmp_path / "o.zarr.zip").exists()


def test_a_client_closed_mid_write_is_said_so(tmp_path):
    # distributed says "cancelled for reason: unknown" of the write's futures then (before,
    # the cancel itself failed: "Client is closed. Can't send cancel-keys message")
    def slow(i):
        time.sleep(0.3)
        return np.full((4, 8, 8, 3), i, np.uint8)

    blocks = [
        dask.array.from_delayed(dask.delayed(slow)(i), (4, 8, 8, 3), np.uint8) for i in range(12)
    ]
    ds = di.ImageSet(dask.array.concatenate(blocks), np.arange(48) % 2, classes=["a", "b"])
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        client = distributed.Client(cluster, set_as_default=False)
        threading.Timer(1.0, client.close).start()
        with (
            client.as_current(),
            pytest.raises(DaskImgError, match=r"client was closed or lost its scheduler"),
        ):
            di.to_zarr(ds, tmp_path / "x.zarr.zip", chunks=4, order="source")
    assert not (tmp_path / "x.zarr.zip").exists()


@pytest.mark.slow
def test_memory_urls_on_a_cluster_of_processes_say_so(tmp_path, cluster):
    # fsspec's memory:// lives in one process: read on the workers, a store was "changed
    # since it was opened (it is gone)", its files "no such file"; a folder written there
    # was "damaged (shard missing)" on every try. The same on this process's threads reads
    # right (numpy's oracle)
    import io

    import fsspec
    from PIL import Image

    from daskimg.errors import ProcessLocalError

    fs = fsspec.filesystem("memory")
    images = np.arange(12 * 4 * 4 * 3, dtype=np.uint32).astype(np.uint8).reshape(12, 4, 4, 3)
    for i in range(4):
        png = io.BytesIO()
        Image.fromarray(images[i]).save(png, "PNG")
        fs.pipe(f"/daskimg-test-src/{'ab'[i % 2]}/{i}.png", png.getvalue())
    ds = di.ImageSet(images, np.arange(12) % 2)
    di.to_zarr(ds, "memory://daskimg-test/t.zarr.zip", chunks=4, order="source")
    try:
        with distributed.Client(cluster):
            opened = di.open_zarr("memory://daskimg-test/t.zarr.zip")
            with pytest.raises(ProcessLocalError, match=r"t\.zarr\.zip.*another process"):
                opened.images.compute()
            with pytest.raises(ProcessLocalError, match=r"u\.zarr'.*other processes"):
                di.to_zarr(ds, "memory://daskimg-test/u.zarr", chunks=4)
            assert not fs.exists("/daskimg-test/u.zarr")
            files = di.from_folder("memory://daskimg-test-src", size=(4, 4), on_error="skip")
            with pytest.raises(ProcessLocalError, match=r"\.png'.*another process"):
                di.to_zarr(files, tmp_path / "f.zarr.zip")  # no file taken for bad
        # a cluster of this process's threads sees them, also talking over tcp:// (its
        # workers' addresses then look like other processes')
        with (
            distributed.LocalCluster(
                n_workers=1, processes=False, protocol="tcp", dashboard_address=None
            ) as threads,
            distributed.Client(threads),
        ):
            di.to_zarr(ds, "memory://daskimg-test/w.zarr", chunks=4, order="source")
            np.testing.assert_array_equal(
                di.open_zarr("memory://daskimg-test/w.zarr").images.compute(), images
            )
        with dask.config.set(scheduler="threads"):
            np.testing.assert_array_equal(opened.images.compute(), images)
            di.to_zarr(ds, "memory://daskimg-test/u.zarr", chunks=4, order="source")
            np.testing.assert_array_equal(
                di.open_zarr("memory://daskimg-test/u.zarr").images.compute(), images
            )
    finally:
        for top in ("/daskimg-test", "/daskimg-test-src"):
            if fs.exists(top):
                fs.rm(top, recursive=True)
