"""Object storage: sources and stores on s3:// URLs, against moto's S3 server on loopback.

The server is started here, on 127.0.0.1 only; the credentials are dummies, and the AWS
environment variables are set to dummies too, so nothing can reach a real endpoint.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import zarr

import daskimg as di
import daskimg.remote
from daskimg import storeinfo
from daskimg.errors import DecodeError, IncompleteStoreError, StoreExistsError

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="session")
def s3():
    """``storage_options`` for a fresh moto S3 server on loopback, with a bucket ``daskimg``."""
    mp = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        mp.setenv(name, value)
    mp.delenv("AWS_PROFILE", raising=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    # a safety net: a call that forgets storage_options still goes to this server
    mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
    }
    import fsspec

    fs = fsspec.filesystem("s3", **options)
    fs.mkdir("daskimg")
    yield options
    server.stop()
    mp.undo()


def _plain_group(url, s3):
    """The store at ``url`` opened by plain zarr (a zip through fsspec's ``zip::`` chain)."""
    store = (
        zarr.storage.FsspecStore.from_url(url, storage_options=s3, read_only=True)
        if url.endswith(".zarr")
        else zarr.storage.FsspecStore.from_url(
            "zip::" + url, storage_options={"s3": s3}, read_only=True
        )
    )
    return zarr.open_group(store, mode="r")


@pytest.fixture
def s3fs_(s3):
    import fsspec

    return fsspec.filesystem("s3", **s3)


@pytest.fixture
def prefix():
    """A fresh key prefix per test, so tests share the bucket without seeing each other."""
    return f"s3://daskimg/{uuid.uuid4().hex[:8]}"


@pytest.fixture
def uploaded(image_folder, s3fs_, prefix):
    """The 24-image folder, uploaded to ``<prefix>/src``; returns its URL."""
    s3fs_.put(str(image_folder) + "/", prefix + "/src", recursive=True)
    return prefix + "/src"


def assert_same_set(remote: di.ImageSet, local: di.ImageSet) -> None:
    np.testing.assert_array_equal(remote.images.compute(), local.images.compute())
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert remote.classes == local.classes
    assert list(remote.paths) == list(local.paths)


def test_from_folder_on_s3_equals_local(image_folder, uploaded, s3):
    remote = di.from_folder(uploaded, size=(16, 20), storage_options=s3, chunks=7)
    local = di.from_folder(image_folder, size=(16, 20), chunks=7)
    assert remote.root == uploaded
    assert remote.store_path is None
    assert all(p.startswith(uploaded + "/") for p in remote.row_source.paths)
    # one task per block of 7 files, whose arguments are URLs and options, not open files
    assert (
        len(remote.images.dask) == len(local.images.dask) == 2 * 4
    )  # one decode task per block, and its images view
    assert_same_set(remote, local)


def test_from_folder_on_s3_predefined_splits(tmp_path, s3fs_, prefix, s3):
    for split in ("train", "val"):
        di.testing.make_image_folder(tmp_path / split, n=6, classes=("a", "b"), seed=3)
    (tmp_path / "train" / "a" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    s3fs_.put(str(tmp_path) + "/", prefix + "/data", recursive=True)
    remote = di.from_folder(prefix + "/data", size=(8, 8), storage_options=s3)
    local = di.from_folder(tmp_path, size=(8, 8))
    assert_same_set(remote, local)
    assert {k: len(v) for k, v in remote.split().items()} == {"train": 6, "valid": 6}


def test_imread_glob_on_s3_equals_local(image_folder, uploaded, s3):
    remote = di.imread(uploaded + "/**/*.png", size=(12, 12), storage_options=s3, chunks=5)
    local = di.imread(str(image_folder / "**" / "*.png"), size=(12, 12), chunks=5)
    assert remote.shape == local.shape == (24, 12, 12, 3)
    np.testing.assert_array_equal(remote.compute(), local.compute())


def test_from_csv_on_s3(image_folder, uploaded, s3fs_, s3):
    files = sorted(image_folder.rglob("*.png"))[:5]
    rows = "path,label,x\n" + "".join(
        f"{f.relative_to(image_folder).as_posix()},{f.parent.name},{i}\n"
        for i, f in enumerate(files)
    )
    (image_folder / "labels.csv").write_text(rows)
    s3fs_.put_file(str(image_folder / "labels.csv"), uploaded + "/labels.csv")
    remote = di.from_csv(uploaded + "/labels.csv", root=uploaded, size=(8, 8), storage_options=s3)
    local = di.from_csv(image_folder / "labels.csv", root=image_folder, size=(8, 8))
    assert_same_set(remote, local)
    np.testing.assert_array_equal(remote.columns["x"], local.columns["x"])


def test_missing_object_is_a_decode_error_naming_the_url(uploaded, s3fs_, s3):
    ds = di.from_folder(uploaded, size=(8, 8), storage_options=s3)
    gone = ds.row_source.paths[3]
    s3fs_.rm(gone)
    with pytest.raises(DecodeError, match="no such file") as err:
        ds.images.compute()
    assert gone in str(err.value)


def test_skip_on_s3_leaves_the_bad_object_out(uploaded, s3fs_, s3, prefix):
    ds = di.from_folder(uploaded, size=(8, 8), storage_options=s3, on_error="skip")
    bad = ds.row_source.paths[5]
    s3fs_.pipe_file(bad, b"not an image")
    url = di.to_zarr(ds, prefix + "/out/train.zarr", order="source", chunks=4, storage_options=s3)
    back = di.open_zarr(url, storage_options=s3)
    assert len(back) == 23
    assert [p for p, _ in back.skipped] == [str(ds.paths[5])]
    good = np.delete(np.arange(24), 5)
    np.testing.assert_array_equal(back.images.compute(), ds.take(good).images.compute())


@pytest.mark.parametrize("name", ["train.zarr.zip", "train.zarr"])
def test_store_round_trip_through_s3(image_folder, tmp_path, s3, prefix, name):
    ds = di.from_folder(image_folder, size=(16, 16))
    url = di.to_zarr(ds, f"{prefix}/out/{name}", storage_options=s3, chunks=5, split="train")
    assert url == f"{prefix}/out/{name}"
    local = di.open_zarr(di.to_zarr(ds, tmp_path / name, chunks=5, split="train"))
    remote = di.open_zarr(url, storage_options=s3)
    assert remote.store_path is None and remote.store_url == url
    assert remote.attrs["complete"] is True and remote.attrs["num_samples"] == 24
    assert remote.images.chunks[0] == (5, 5, 5, 5, 4)
    assert_same_set(remote, local)
    # plain zarr reads the stored bytes (a zip through fsspec's zip:: chain), equal to local
    plain = _plain_group(url, s3)
    np.testing.assert_array_equal(plain["images"][...], local.images.compute())
    assert plain.attrs["daskimg"]["complete"] is True
    assert storeinfo.verify(url, storage_options=s3) == []
    assert storeinfo.info(url, storage_options=s3)["arrays"]["images"]["shape"] == [
        24,
        16,
        16,
        3,
    ]


@pytest.mark.parametrize("name", ["a.zarr.zip", "a.zarr"])
def test_existing_complete_store_needs_overwrite(indexed_set, s3, prefix, name):
    url = f"{prefix}/{name}"
    di.to_zarr(indexed_set, url, storage_options=s3, chunks=10)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        di.to_zarr(indexed_set, url, storage_options=s3)
    di.to_zarr(indexed_set.take(np.arange(50)), url, storage_options=s3, overwrite=True)
    assert len(di.open_zarr(url, storage_options=s3)) == 50


def test_overwrite_at_a_url_replaces_a_store_zip_but_not_another_object(
    indexed_set, s3, s3fs_, prefix, tmp_path
):
    # (review) a local file that is no store's zip was refused by overwrite=True; one at a
    # URL was replaced, the user's zip with it
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "precious")
    theirs, text = f"{prefix}/mine.zarr.zip", f"{prefix}/notes.zarr.zip"
    s3fs_.pipe({theirs: buf.getvalue(), text: b"precious"})
    for url, says in ((theirs, r"a zip of other files \('notes\.txt'\)"), (text, "not a zip")):
        with pytest.raises(StoreExistsError, match=says):
            di.to_zarr(indexed_set, url, storage_options=s3, overwrite=True)
        with pytest.raises(StoreExistsError, match=says):
            di.ArrayWriter(url, arrays={"x": ((2,), "float32")}, num_samples=4,
                           storage_options=s3, overwrite=True)  # fmt: skip
    assert s3fs_.cat(text) == b"precious"
    # a store's zip (daskimg's): replaced
    ours = f"{prefix}/ours.zarr.zip"
    with open(di.to_zarr(indexed_set, tmp_path / "o.zarr.zip"), "rb") as fh:
        s3fs_.pipe({ours: fh.read()})
    di.to_zarr(indexed_set.take(np.arange(20)), ours, storage_options=s3, overwrite=True)
    assert len(di.open_zarr(ours, storage_options=s3)) == 20


def test_overwrite_at_a_url_replaces_a_store_but_not_a_folder_of_other_objects(
    indexed_set, s3, s3fs_, prefix
):
    # overwrite=True removed whatever objects a URL folder held (a local folder of other
    # files was refused already)
    mine = f"{prefix}/photos.zarr"
    s3fs_.pipe({f"{mine}/notes.txt": b"mine", f"{mine}/raw/a.jpg": b"jpeg"})
    for write in (
        lambda: di.to_zarr(indexed_set, mine, storage_options=s3, overwrite=True),
        lambda: di.ArrayWriter(
            mine, arrays={"x": ((2,), "float32")}, num_samples=4, storage_options=s3,
            overwrite=True,
        ),
    ):  # fmt: skip
        with pytest.raises(StoreExistsError, match=r"photos\.zarr' is a folder of other files"):
            write()
    assert s3fs_.cat(f"{mine}/notes.txt") == b"mine" and s3fs_.exists(f"{mine}/raw/a.jpg")
    # plain zarr's store, and what a stopped replacement left (an array, no root): replaced
    plain = f"{prefix}/plain.zarr"
    group = zarr.open_group(zarr.storage.FsspecStore.from_url(plain, storage_options=s3), mode="w")
    group.create_array("a", shape=(2,), dtype="u1")[:] = 1
    left = f"{prefix}/left.zarr"
    di.to_zarr(indexed_set, left, storage_options=s3, chunks=10)
    s3fs_.rm_file(f"{left}/zarr.json")
    for url in (plain, left):
        di.to_zarr(indexed_set, url, storage_options=s3, overwrite=True, order="source")
        got = _plain_group(url, s3)["images"][:]  # oracle: plain zarr
        np.testing.assert_array_equal(got, indexed_set.images.compute())


def test_url_writes_leave_no_folder_in_the_temporary_directory(
    indexed_set, s3, prefix, tmp_path, monkeypatch
):
    # each URL written left an empty <tmp>/daskimg-writer/<digest>/ behind
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    small = indexed_set.take(np.arange(6))
    for name in ("a.zarr", "a.zarr.zip"):
        di.to_zarr(small, f"{prefix}/{name}", storage_options=s3, chunks=4)
        with di.ArrayWriter(
            f"{prefix}/w{name}", arrays={"x": ((2,), "float32")}, storage_options=s3
        ) as w:
            w.append(np.ones((3, 2), np.float32))
        with pytest.raises(StoreExistsError):
            di.to_zarr(small, f"{prefix}/{name}", storage_options=s3)
        assert len(di.open_zarr(f"{prefix}/{name}", storage_options=s3)) == 6
    assert [p for p in tmp_path.rglob("*") if p.name != "daskimg-writer"] == []


@pytest.mark.parametrize("name", ["a.zarr.zip", "a.zarr"])
def test_write_that_fails_midway_leaves_no_store(indexed_set, s3, s3fs_, prefix, name, monkeypatch):
    url = f"{prefix}/{name}"

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(
        "daskimg.store.write.finish_attrs", boom
    )  # after the arrays, before the end
    with pytest.raises(RuntimeError, match="disk on fire"):
        di.to_zarr(indexed_set, url, storage_options=s3, chunks=10)
    assert not s3fs_.exists(url)
    with pytest.raises(FileNotFoundError, match="no store at"):
        di.open_zarr(url, storage_options=s3)


def test_upload_that_fails_leaves_the_old_zip(indexed_set, s3, s3fs_, prefix, monkeypatch):
    url = f"{prefix}/a.zarr.zip"
    di.to_zarr(indexed_set, url, storage_options=s3, chunks=10)

    def cut(*args, **kwargs):
        raise ConnectionError("connection reset")

    # fsspec caches filesystems by their options: this is the instance to_zarr uses
    assert daskimg.remote.filesystem(url, s3)[0] is s3fs_
    monkeypatch.setattr(s3fs_, "put_file", cut)
    with pytest.raises(ConnectionError):
        di.to_zarr(indexed_set.take(np.arange(7)), url, storage_options=s3, overwrite=True)
    assert len(di.open_zarr(url, storage_options=s3)) == len(indexed_set)


def test_killed_writer_leaves_an_incomplete_store(indexed_set, s3, s3fs_, prefix, tmp_path):
    """SIGKILL a process writing a .zarr folder to S3: the store must never look complete."""
    url = f"{prefix}/killed.zarr"
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time, numpy as np, dask, daskimg as di, daskimg.store.write as st

            def slow(*args):  # every array is written; hang before the root is finished
                print("pixels written", flush=True)
                time.sleep(60)

            st.finish_attrs = slow
            ds = di.ImageSet(np.zeros((40, 4, 4, 3), np.uint8), np.arange(40) % 2, classes=["a", "b"])
            with dask.config.set(scheduler="synchronous"):
                di.to_zarr(ds, {url!r}, storage_options={s3!r}, chunks=5)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "pixels written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert s3fs_.exists(url + "/images")  # chunks were written ...
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        di.open_zarr(url, storage_options=s3)  # ... but the store is refused
    assert any("incomplete" in p.message for p in storeinfo.verify(url, storage_options=s3))
    # re-running the same call replaces the unfinished store without overwrite=True
    di.to_zarr(indexed_set, url, storage_options=s3, chunks=5)
    assert len(di.open_zarr(url, storage_options=s3)) == len(indexed_set)


@pytest.mark.parametrize("name", ["v.zarr.zip", "v.zarr"])
def test_newer_format_version_is_refused(indexed_set, tmp_path, s3, s3fs_, prefix, name):
    local = tmp_path / name
    di.to_zarr(indexed_set, local, chunks=10)
    if name.endswith(".zarr"):
        import json

        meta = json.loads((local / "zarr.json").read_text())
        meta["attributes"]["daskimg"]["format_version"] = 99
        (local / "zarr.json").write_text(json.dumps(meta))
        s3fs_.put(str(local) + "/", f"{prefix}/{name}", recursive=True)
    else:
        import zipfile

        with zipfile.ZipFile(local) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist()}
        meta = __import__("json").loads(members["zarr.json"])
        meta["attributes"]["daskimg"]["format_version"] = 99
        members["zarr.json"] = __import__("json").dumps(meta).encode()
        with zipfile.ZipFile(tmp_path / "new.zip", "w") as zf:
            for k, v in members.items():
                zf.writestr(k, v)
        s3fs_.put_file(str(tmp_path / "new.zip"), f"{prefix}/{name}")
    with pytest.raises(di.errors.FormatVersionError, match="newer"):
        di.open_zarr(f"{prefix}/{name}", storage_options=s3)


@pytest.mark.parametrize("name", ["b.zarr.zip", "b.zarr"])
def test_batch_iterator_over_s3_store_yields_every_sample_once(indexed_set, s3, prefix, name):
    url = di.to_zarr(indexed_set, f"{prefix}/{name}", storage_options=s3, chunks=10)
    ds = di.open_zarr(url, storage_options=s3)
    kw = {"batch_size": 16, "seed": 1, "arrays": ["images", "idx"]}
    for it in (di.BatchIterator(ds, **kw), di.BatchIterator(url, storage_options=s3, **kw)):
        seen = list(it)
        idx = np.concatenate([i for _, i in seen])
        assert sorted(idx.tolist()) == list(range(len(indexed_set)))
        images = np.concatenate([im for im, _ in seen])
        np.testing.assert_array_equal(images, indexed_set.images.compute()[idx])


def test_store_on_s3_reads_on_a_distributed_cluster(indexed_set, s3, prefix, client):
    url = di.to_zarr(indexed_set, f"{prefix}/d.zarr", storage_options=s3, chunks=10)
    zurl = di.to_zarr(indexed_set, f"{prefix}/d.zarr.zip", storage_options=s3, chunks=10)
    for u in (url, zurl):
        back = di.open_zarr(u, storage_options=s3)
        total = int(back.images.astype(np.int64).sum().compute())
        assert total == int(indexed_set.images.astype(np.int64).sum().compute())


def test_zip_reads_are_ranged_not_whole(indexed_set, s3, prefix, monkeypatch):
    import s3fs

    import daskimg.store.ranged as ranged
    import daskimg.store.urlsource as urlsource

    # a zip this small is fetched whole on purpose (one request): make its members count as big
    monkeypatch.setattr(urlsource, "ZIP_TAIL", 1000)
    monkeypatch.setattr(urlsource, "SMALL", 100)
    monkeypatch.setattr(ranged, "SMALL", 100)
    url = di.to_zarr(indexed_set, f"{prefix}/r.zarr.zip", storage_options=s3, chunks=10)
    size = s3fs.S3FileSystem(**s3).size(url)
    ranges: list[str | None] = []
    original = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kw):
        if method == "get_object":
            ranges.append(kw.get("Range"))
        return await original(self, method, *args, **kw)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    ds = di.open_zarr(url, storage_options=s3)
    ds.images.blocks[3].compute()
    assert ranges and None not in ranges
    lengths = [int(b) - int(a) + 1 for a, b in (r.split("=")[1].split("-") for r in ranges)]
    assert max(lengths) < size / 4


def test_storage_options_with_a_local_path_are_refused(tmp_path, indexed_set):
    with pytest.raises(ValueError, match="storage_options apply to URLs"):
        di.to_zarr(indexed_set, tmp_path / "x.zarr.zip", storage_options={"anon": True})


def test_unknown_protocol_names_the_url(indexed_set):
    with pytest.raises((ValueError, ImportError), match=re.escape("nosuchproto://b/x.zarr.zip")):
        di.open_zarr("nosuchproto://b/x.zarr.zip")


def test_no_real_aws_endpoint_is_used(s3):
    assert s3["client_kwargs"]["endpoint_url"].startswith("http://127.0.0.1:")
    assert os.environ["AWS_ACCESS_KEY_ID"] == "testing"


def test_cli_ingest_info_verify_on_s3(uploaded, s3, prefix, capsys):
    from daskimg.cli import main

    opts = ["--storage-options", json.dumps(s3)]
    out = prefix + "/stores"
    assert main(["ingest", uploaded, out, "--size", "8", "8", "--chunk", "4", *opts]) == 0
    assert main(["info", out + "/train.zarr.zip", *opts]) == 0
    assert "complete=True" in capsys.readouterr().out
    assert main(["verify", out + "/valid.zarr.zip", *opts]) == 0
    assert "every chunk present" in capsys.readouterr().out
    parts = [
        len(di.open_zarr(f"{out}/{s}.zarr.zip", storage_options=s3))
        for s in ("train", "valid", "test")
    ]
    assert sum(parts) == 24


def test_cli_ingest_rerun_after_an_object_is_written_again_is_refused(
    uploaded, s3, s3fs_, prefix, capsys
):
    # files at URLs counted by their names only: an image written again under its name
    # kept the old store, "written from the same files and settings", holding old pixels
    from PIL import Image

    from daskimg.cli import main

    opts = ["--storage-options", json.dumps(s3)]
    out = prefix + "/rerun"
    run = ["ingest", uploaded, out, "--size", "8", "8", "--valid", "0", "--test", "0", *opts]
    assert main(run) == 0
    assert main(run) == 0  # nothing changed: kept
    assert "kept" in capsys.readouterr().out
    key = sorted(k for k in s3fs_.find(uploaded) if k.endswith(".png"))[0]
    with s3fs_.open(key, "rb") as fh:
        old = np.asarray(Image.open(fh).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(255 - old).save(buf, format="PNG")  # other pixels, the same name
    s3fs_.pipe(key, buf.getvalue())
    assert main(run) == 2
    assert "written from other files or settings" in capsys.readouterr().err
    assert main([*run, "--overwrite"]) == 0
    stored = di.open_zarr(out + "/train.zarr.zip", storage_options=s3)
    row = list(stored.paths).index(key.split(uploaded.split("://", 1)[1] + "/", 1)[1])
    expect = np.asarray(Image.fromarray(255 - old).resize((8, 8), Image.BILINEAR))
    np.testing.assert_allclose(stored.images[row].compute(), expect, atol=1)  # oracle: Pillow


def _png(value, size=(8, 8)):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_files_and_masks_in_two_buckets_count_with_their_state(s3, s3fs_, prefix):
    # one listing of the folder holding every file: for two buckets that was the whole
    # of S3 ("Cannot traverse all of S3"), and to_zarr failed; each folder is listed now
    from daskimg.store.write import fingerprint

    other = "daskimg-masks-" + prefix.rsplit("/", 1)[1]
    s3fs_.mkdir(other)
    for c in ("a", "b"):
        for k in range(2):
            s3fs_.pipe(f"{prefix}/img/{c}/{k}.png", _png(40 * k))
            s3fs_.pipe(f"s3://{other}/m/{c}/{k}.png", _mask(k))
    ds = di.from_folder(prefix + "/img", size=(8, 8), masks=f"s3://{other}/m", storage_options=s3)
    before = fingerprint(ds)
    assert fingerprint(ds) == before  # nothing changed
    out = di.to_zarr(ds, prefix + "/out.zarr.zip", storage_options=s3)
    assert len(di.open_zarr(out, storage_options=s3)) == 4
    s3fs_.pipe(f"s3://{other}/m/a/1.png", _mask(1, value=2))  # a mask written again
    assert fingerprint(ds) != before


def _mask(k, value=1):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value * k, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_files_whose_folder_cannot_be_listed_are_asked_one_by_one(monkeypatch, caplog):
    # a web server without folder listings, a bucket readable but not listable: to_zarr
    # failed with the listing's error (a bare 403 naming no file)
    import fsspec

    import daskimg.store.write as write

    fs = fsspec.filesystem("memory")
    root = f"/daskimg-unlisted-{uuid.uuid4().hex[:8]}"
    for k in range(3):
        fs.pipe(f"{root}/a/{k}.png", _png(10 * k))
    ds = di.from_folder(f"memory://{root}", size=(8, 8))

    def refused(self, path, detail=True, **kw):
        raise PermissionError(f"403 Forbidden: {path}")

    monkeypatch.setattr(type(fs), "ls", refused)
    before = write.fingerprint(ds)  # each file asked for its state
    fs.pipe(f"{root}/a/1.png", _png(200))  # written again, the same name
    assert write.fingerprint(ds) != before
    monkeypatch.setattr(write, "_ASKED", 1)  # more files than may be asked: said
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        write.fingerprint(ds)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "2 files at URLs could not be listed" in said and "403 Forbidden" in said, said
    fs.rm(root, recursive=True)


def test_cli_ingest_into_a_class_folder_of_its_url_source_is_refused(uploaded, s3, s3fs_, capsys):
    # `ingest s3://b/photos s3://b/photos/cat` wrote a set without cat, exit 0: the OUT-inside-
    # SRC check ran on local paths only
    from daskimg.cli import main

    opts = ["--storage-options", json.dumps(s3)]
    classes = sorted({k.split("/")[-2] for k in s3fs_.find(uploaded)})  # the oracle: s3fs
    into = uploaded + "/" + classes[0]
    assert main(["ingest", uploaded, into, "--size", "8", "8", *opts]) == 2
    assert "holds images" in capsys.readouterr().err
    assert not [k for k in s3fs_.find(into) if ".zarr" in k]
    # a folder of stores inside SRC stays allowed, also on its next run
    stores = ["ingest", uploaded, uploaded + "/stores", "--size", "8", "8", *opts]
    assert main(stores) == 0
    assert main([*stores, "--overwrite"]) == 0
    assert len(di.open_zarr(uploaded + "/stores/train.zarr.zip", storage_options=s3)) > 0


# -- ArrayWriter to a URL -------------------------------------------------------------


@pytest.fixture
def local_tmp(tmp_path, monkeypatch):
    """tempfile.gettempdir() is ``tmp_path/tmp`` here, so the writer's local copies are seen."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(root))
    return root


def _features(n=53, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)).astype("float32"), rng.integers(0, 1000, n)


def _write_features(url, feats, ids, **kw):
    """Append ``feats``/``ids`` in uneven batches (numpy and dask) to an open ArrayWriter."""
    import dask.array as da

    w = di.ArrayWriter(
        url, arrays={"features": ((6,), "float32"), "ids": ((), "int64")}, chunks=8, **kw
    )
    w.append(features=feats[:20], ids=ids[:20])
    w.append(features=da.from_array(feats[20:], chunks=11), ids=ids[20:])
    return w


@pytest.mark.parametrize("name", ["features.zarr.zip", "features.zarr"])
def test_writer_round_trip_through_s3(s3, s3fs_, prefix, local_tmp, name):
    from daskimg.writeback.writer import local_copy

    url = f"{prefix}/out/{name}"
    feats, ids = _features()
    w = _write_features(url, feats, ids, storage_options=s3)
    assert w.url == url and w.path == local_copy(url)
    assert w.path.startswith(str(local_tmp / "daskimg-writer") + os.sep)
    assert not s3fs_.exists(url)  # nothing at the URL before close()
    w.close()
    assert not os.path.exists(w.path)  # the local copy is removed after the upload
    back = di.open_zarr(url, storage_options=s3)
    assert back.attrs["complete"] is True and back.attrs["num_samples"] == len(feats)
    np.testing.assert_array_equal(back.arrays["features"].compute(), feats)
    np.testing.assert_array_equal(np.asarray(back.arrays["ids"]), ids)
    # plain zarr reads the uploaded bytes too
    plain = _plain_group(url, s3)
    np.testing.assert_array_equal(plain["features"][...], feats)
    assert storeinfo.verify(url, storage_options=s3) == []


@pytest.mark.parametrize("name", ["f.zarr.zip", "f.zarr"])
def test_writer_to_s3_existing_store_needs_overwrite(s3, prefix, local_tmp, name):
    url = f"{prefix}/{name}"
    feats, ids = _features()
    _write_features(url, feats, ids, storage_options=s3).close()
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        di.ArrayWriter(url, shape=(6,), dtype="float32", storage_options=s3)
    # refused before any work; the first write left nothing behind either
    assert not any((local_tmp / "daskimg-writer").rglob("*"))
    new, new_ids = _features(n=17, seed=1)
    _write_features(url, new, new_ids, storage_options=s3, overwrite=True).close()
    back = di.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back.arrays["features"].compute(), new)
    np.testing.assert_array_equal(np.asarray(back.arrays["ids"]), new_ids)


def test_writer_to_s3_mode_a_is_refused(s3, prefix, local_tmp):
    with pytest.raises(ValueError, match="mode='a' cannot add arrays to a store at a URL"):
        di.ArrayWriter(
            f"{prefix}/t.zarr.zip", shape=(2,), dtype="float32", mode="a", storage_options=s3
        )


@pytest.mark.parametrize("name", ["u.zarr.zip", "u.zarr"])
def test_writer_upload_that_fails_is_published_by_resume(
    s3, s3fs_, prefix, local_tmp, monkeypatch, name
):
    url = f"{prefix}/{name}"
    feats, ids = _features()

    def cut(*args, **kwargs):
        raise ConnectionError("connection reset")

    with monkeypatch.context() as m:
        m.setattr("daskimg.store.location.Location.upload", cut)
        w = _write_features(url, feats, ids, storage_options=s3)
        with pytest.raises(ConnectionError), w:
            pass  # close() fails in __exit__
    with pytest.raises(FileNotFoundError, match="no store at"):
        di.open_zarr(url, storage_options=s3)
    # the finished store waits locally, complete
    np.testing.assert_array_equal(di.open_zarr(w.path).arrays["features"].compute(), feats)
    with pytest.raises(ValueError, match="cannot resume"):  # not the arrays it holds
        di.ArrayWriter(url, shape=(6,), dtype="float32", storage_options=s3, resume=True)
    w2 = di.ArrayWriter(
        url,
        arrays={"features": ((6,), "float32"), "ids": ((), "int64")},
        chunks=8,
        storage_options=s3,
        resume=True,
    )
    assert len(w2) == len(feats) and w2.path == w.path
    with pytest.raises(ValueError, match=r"close\(\) uploads them"):
        w2.append(features=feats[:1], ids=ids[:1])
    w2.close()
    assert not os.path.exists(w2.path)
    back = di.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back.arrays["features"].compute(), feats)
    np.testing.assert_array_equal(np.asarray(back.arrays["ids"]), ids)


@pytest.mark.parametrize("name", ["p.zarr.zip", "p.zarr"])
def test_writer_upload_cut_midway_never_looks_complete(
    s3, s3fs_, prefix, local_tmp, monkeypatch, name
):
    """The last put fails (the zip; the folder's root zarr.json): nothing opens; close() retries."""
    url = f"{prefix}/{name}"
    old, old_ids = _features(n=9, seed=2)
    _write_features(url, old, old_ids, storage_options=s3).close()
    feats, ids = _features()

    def cut(*args, **kwargs):
        raise ConnectionError("connection reset")

    assert daskimg.remote.filesystem(url, s3)[0] is s3fs_  # the instance the writer uses
    monkeypatch.setattr(s3fs_, "put_file", cut)
    w = _write_features(url, feats, ids, storage_options=s3, overwrite=True)
    with pytest.raises(ConnectionError):
        w.close()
    back = None
    if name.endswith(".zarr"):  # shards were uploaded, the root zarr.json was not
        assert s3fs_.exists(url + "/features")
        with pytest.raises(IncompleteStoreError):
            di.open_zarr(url, storage_options=s3)
    else:  # a zip appears whole or not at all: the old one is still there
        back = di.open_zarr(url, storage_options=s3)
        np.testing.assert_array_equal(back.arrays["features"].compute(), old)
    monkeypatch.delattr(s3fs_, "put_file")
    w.close()  # retries the upload
    back = di.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back.arrays["features"].compute(), feats)
    np.testing.assert_array_equal(np.asarray(back.arrays["ids"]), ids)
    assert not os.path.exists(w.path)


def test_writer_local_path_is_unchanged(tmp_path, local_tmp):
    feats, ids = _features()
    path = tmp_path / "local" / "f.zarr.zip"
    with pytest.raises(ValueError, match="storage_options apply to URLs"):
        di.ArrayWriter(path, shape=(6,), dtype="float32", storage_options={"anon": True})
    w = _write_features(path, feats, ids)
    assert w.url is None and w.path == str(path)
    assert os.path.isdir(str(path) + ".partial")
    w.close()
    back = di.open_zarr(path)
    np.testing.assert_array_equal(back.arrays["features"].compute(), feats)
    np.testing.assert_array_equal(back.arrays["ids"], ids)
    assert not (local_tmp / "daskimg-writer").exists()
    # a file:// URL is a local path
    _write_features("file://" + str(tmp_path / "g.zarr"), feats, ids).close()
    np.testing.assert_array_equal(
        zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["features"][...], feats
    )


def test_writer_killed_during_upload_is_published_by_resume(s3, prefix, tmp_path, local_tmp):
    """SIGKILL a writer while it uploads a .zarr folder: the URL never opens as complete."""
    url = f"{prefix}/killed-w.zarr"
    feats, ids = _features()
    np.save(tmp_path / "feats.npy", feats)
    np.save(tmp_path / "ids.npy", ids)
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import time, numpy as np, s3fs, daskimg as di

            def hang(self, lpath, rpath, **kw):  # every shard is up; hang before the root
                print("shards uploaded", flush=True)
                time.sleep(60)

            s3fs.S3FileSystem.put_file = hang
            w = di.ArrayWriter({url!r}, arrays={{"features": ((6,), "float32"),
                               "ids": ((), "int64")}}, chunks=8, storage_options={s3!r})
            w.append(features=np.load({str(tmp_path / "feats.npy")!r}),
                     ids=np.load({str(tmp_path / "ids.npy")!r}))
            w.close()
            """
        )
    )
    env = {**os.environ, "TMPDIR": str(local_tmp)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "shards uploaded"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with pytest.raises(IncompleteStoreError):
        di.open_zarr(url, storage_options=s3)
    w = di.ArrayWriter(
        url,
        arrays={"features": ((6,), "float32"), "ids": ((), "int64")},
        chunks=8,
        storage_options=s3,
        resume=True,
    )
    assert len(w) == len(feats)
    w.close()
    back = di.open_zarr(url, storage_options=s3)
    np.testing.assert_array_equal(back.arrays["features"].compute(), feats)
    np.testing.assert_array_equal(np.asarray(back.arrays["ids"]), ids)


def test_a_write_in_place_whose_server_is_gone_leaves_cleaning_up_to_the_next_write(
    monkeypatch, caplog
):
    # a .zarr written to object storage whose server went away: every removal of the
    # unfinished store was retried for minutes (the error came after 64-254 s, not 11)
    import logging

    from daskimg.store import location

    cleared = []
    monkeypatch.setattr(location, "clear_url", lambda fs, key: cleared.append(key))
    loc = location.Location.of("memory://daskimg-gone/x.zarr")

    class EndpointConnectionError(Exception):  # botocore's, by name
        pass

    try:
        try:
            raise EndpointConnectionError("Could not connect to the endpoint URL")
        except EndpointConnectionError as e:
            raise RuntimeError("the write failed") from e
    except RuntimeError as chained:
        gone = chained
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        for cause in (gone, ConnectionRefusedError(111, "Connection refused")):
            loc.abandon_in_place(cause)
    assert cleared == []
    assert caplog.text.count("cannot be reached") == 2
    loc.abandon_in_place(ValueError("a bad value"))  # the server answers: cleaned up
    assert [k.lstrip("/") for k in cleared] == ["daskimg-gone/x.zarr"]
