"""daskimg's own chunk and shard encoder (store/encode.py, store/shardwrite.py) against zarr.

The oracle is zarr-python itself: the same array written through zarr's sharding codec
must give the same stored bytes (lossless chains) and plain zarr must read back what
daskimg's encoder wrote.
"""

from __future__ import annotations

import json
import os

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from numcodecs import Blosc

from daskimg.store.encode import ShardEncoder
from daskimg.store.format import ArraySpec, create_arrays, root_attrs
from daskimg.store.shardwrite import shard_writes, write_file
from daskimg.store.zipbuild import ZipBuilder


def _make(path, n, sample, dtype, codec, chunk_len, shard_len):
    attrs = root_attrs(
        split=None, num_samples=n, classes=[], chunk_len=chunk_len, codec=codec,
        order="source", seed=0, boxes=[], source={},
    )  # fmt: skip
    spec = ArraySpec("x", sample, np.dtype(dtype), codec)
    return create_arrays(str(path), attrs, [spec], n=n, shard_len=shard_len)["x"]


def _meta(arr):
    """An array's zarr.json as it is on disk (JSON types)."""
    return json.loads(json.dumps(arr.metadata.to_dict(), default=str))


def _data(n, sample, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=(n, *sample)).astype(dtype)
    # photo-like: smooth, so compressors find something to do
    base = rng.integers(0, 200, size=(n, *sample), dtype=np.int64)
    return (np.cumsum(base, axis=-1 if len(sample) else 0) % 251).astype(dtype)


def _files(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f != "zarr.json":
                full = os.path.join(dirpath, f)
                with open(full, "rb") as fh:
                    out[os.path.relpath(full, root)] = fh.read()
    return out


CASES = [
    # n, sample, dtype, codec, chunk_len, shard_len
    (23, (6, 5, 3), "uint8", "lz4", 4, 12),  # partial last chunk and shard
    (24, (6, 5, 3), "uint8", "zstd", 4, 8),  # exact
    (7, (6, 5, 1), "uint8", "none", 3, 9),  # one partial shard
    (10, (3,), "float32", "zstd", 4, 8),  # byte-shuffled numbers
    (11, (), "int64", "lz4", 5, 5),  # not sharded: one key per chunk
    (9, (4, 2), "uint16", "none", 2, 6),
]


@pytest.mark.parametrize(("n", "sample", "dtype", "codec", "chunk_len", "shard_len"), CASES)
def test_same_bytes_as_zarr(tmp_path, n, sample, dtype, codec, chunk_len, shard_len):
    data = _data(n, sample, dtype)
    ref = _make(tmp_path / "ref", n, sample, dtype, codec, chunk_len, shard_len)
    ref[...] = data
    ours = _make(tmp_path / "ours", n, sample, dtype, codec, chunk_len, shard_len)
    enc = ShardEncoder.of("test", "x", _meta(ours))
    assert enc is not None
    put = lambda key, pieces: write_file(str(tmp_path / "ours"), key, pieces)  # noqa: E731
    lazy = da.from_array(data, chunks=(3, *sample))  # not chunk-aligned: rechunked
    with dask.config.set(scheduler="threads"):
        dask.compute(*shard_writes(lazy, enc, put))
    assert _files(tmp_path / "ours") == _files(tmp_path / "ref")
    back = zarr.open_array(str(tmp_path / "ours"), path="x", mode="r")
    np.testing.assert_array_equal(back[...], data)


def test_jpeg_chunks_read_by_plain_zarr(tmp_path):
    n, sample = 9, (16, 24, 3)
    data = _data(n, sample, "uint8")
    ours = _make(tmp_path / "j", n, sample, "uint8", "jpeg:80", 4, 8)
    ref = _make(tmp_path / "r", n, sample, "uint8", "jpeg:80", 4, 8)
    ref[...] = data
    enc = ShardEncoder.of("test", "x", _meta(ours))
    assert enc is not None and enc.jpeg_quality == 80
    put = lambda key, pieces: write_file(str(tmp_path / "j"), key, pieces)  # noqa: E731
    dask.compute(*shard_writes(da.from_array(data, chunks=4), enc, put), scheduler="sync")
    back = zarr.open_array(str(tmp_path / "j"), path="x", mode="r")[...]
    np.testing.assert_array_equal(back, ref[...])  # the same JPEG encoder, the same pixels
    assert _files(tmp_path / "j") == _files(tmp_path / "r")


def test_zip_members_read_by_plain_zarr(tmp_path):
    n, sample = 30, (8, 8, 3)
    data = _data(n, sample, "uint8", seed=3)
    folder = tmp_path / "meta"
    arr = _make(folder, n, sample, "uint8", "lz4", 4, 12)
    enc = ShardEncoder.of("test", "x", _meta(arr))
    zb = ZipBuilder(str(tmp_path / "t.zarr.zip"))
    with dask.config.set(scheduler="threads"):
        dask.compute(*shard_writes(da.from_array(data, chunks=7), enc, zb.put))
    for key in ("zarr.json", "x/zarr.json"):
        zb._meta[key] = (folder / key).read_bytes()
    zb.finish(json.dumps(json.loads((folder / "zarr.json").read_bytes())).encode())
    g = zarr.open_group(zarr.storage.ZipStore(str(tmp_path / "t.zarr.zip"), mode="r"), mode="r")
    np.testing.assert_array_equal(g["x"][...], data)


def test_a_key_is_written_once(tmp_path):
    zb = ZipBuilder(str(tmp_path / "t.zarr.zip"))
    zb.put("x/c/0", [b"abc"])
    with pytest.raises(ValueError, match="written twice"):
        zb.put("x/c/0", [b"abc"])
    zb.close()


def test_chains_left_to_zarr(tmp_path):
    attrs = root_attrs(
        split=None, num_samples=5, classes=[], chunk_len=2, codec="lz4",
        order="source", seed=0, boxes=[], source={},
    )  # fmt: skip
    specs = [ArraySpec("paths", (), np.dtype(object)), ArraySpec("x", (2,), np.dtype("uint8"))]
    arrs = create_arrays(str(tmp_path / "s"), attrs, specs, n=5, shard_len=4)
    text = _meta(arrs["paths"])
    assert ShardEncoder.of("t", "paths", text) is not None
    zstd = text["codecs"][0]["configuration"]["codecs"][1]["configuration"]
    zstd["checksum"] = True  # zstd's own checksum: left to zarr
    assert ShardEncoder.of("t", "paths", text) is None
    zstd["checksum"] = False
    text["fill_value"] = "?"  # zarr would pad with "?"
    assert ShardEncoder.of("t", "paths", text) is None
    meta = _meta(arrs["x"])
    assert ShardEncoder.of("t", "x", meta) is not None
    meta["fill_value"] = 7  # zarr would pad with 7; the encoder pads with 0 only
    assert ShardEncoder.of("t", "x", meta) is None


def test_write_file_writes_every_piece(tmp_path):
    pieces = [b"a" * 5, memoryview(bytearray(b"b" * 70000)), np.arange(10, dtype="<u8")]
    write_file(str(tmp_path), "x/c/0/0", pieces)
    got = (tmp_path / "x" / "c" / "0" / "0").read_bytes()
    assert got == b"".join(bytes(memoryview(p).cast("B")) for p in pieces)


@pytest.mark.parametrize("ext", [".zarr.zip", ".zarr"])
@pytest.mark.parametrize("codec", ["lz4", "none"])
def test_skipping_store_equals_the_store_of_the_good_files(tmp_path, ext, codec):
    """Bad files spread over several shards: the rows of the good ones, shard by shard, are
    what zarr holds for a store written from the good files alone."""
    import daskimg as di
    from daskimg.testing import make_image_folder

    src = tmp_path / "src"
    make_image_folder(src, n=20, size=(10, 12), classes=("a", "b", "c"))
    files = sorted(p for p in src.rglob("*.png"))
    bad = files[1::7]
    for p in bad:
        p.write_bytes(p.read_bytes()[:40])  # truncated
    kw = {"chunks": 3, "shard_chunks": 2, "codec": codec, "order": "source"}
    skipping = di.to_zarr(
        di.from_folder(src, size=(8, 8), on_error="skip"), tmp_path / f"s{ext}", **kw
    )
    for p in bad:
        p.unlink()
    clean = di.to_zarr(di.from_folder(src, size=(8, 8)), tmp_path / f"c{ext}", **kw)

    def group(path):
        store = (
            zarr.storage.ZipStore(path, mode="r")
            if path.endswith(".zip")
            else zarr.storage.LocalStore(path, read_only=True)
        )
        return zarr.open_group(store, mode="r")

    a, b = group(skipping), group(clean)
    assert a["images"].shape[0] == len(files) - len(bad)
    for name in ("images", "labels", "paths", "source_size"):
        np.testing.assert_array_equal(a[name][...], b[name][...])
    assert len(a.attrs["daskimg"]["skipped"]) == len(bad)


def test_a_failed_cleanup_of_a_url_store_is_said(monkeypatch, caplog):
    """A store written in place at a URL whose cleanup fails after an error is named in a
    warning (the write's own error is the one raised)."""
    from daskimg.store import location

    def refuse(fs, key):
        raise PermissionError("read-only bucket")

    monkeypatch.setattr(location, "clear_url", refuse)
    loc = location.Location.of("memory://cleanup-test/t.zarr", None)
    with caplog.at_level("WARNING", logger="daskimg"):
        loc.abandon_in_place()
    assert "memory://cleanup-test/t.zarr" in caplog.text
    assert "read-only bucket" in caplog.text


def test_small_members_are_written_together_before_the_metadata(tmp_path):
    """The 1-D columns' shards come after every image shard, just before the metadata (so
    a reader at a URL fetches them with the zip's tail)."""
    import zipfile

    import daskimg as di
    from daskimg.store import zipbuild
    from daskimg.testing import make_image_folder

    make_image_folder(tmp_path / "src", n=24, size=(40, 40), classes=("a", "b"))
    ds = di.from_folder(tmp_path / "src", size=(256, 256))  # image shards of ~1.5 MB
    path = di.to_zarr(ds, tmp_path / "t.zarr.zip", chunks=4, shard_chunks=2)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    big = [i for i, info in enumerate(infos) if info.file_size > zipbuild._SMALL_MEMBER]
    small = [
        i
        for i, n in enumerate(names)
        if n.split("/")[0] in ("labels", "paths") and not n.endswith("zarr.json")
    ]
    meta = [i for i, n in enumerate(names) if n.endswith("zarr.json")]
    assert small and meta and names[-1] == "zarr.json"
    assert max(small) < min(meta)
    assert len(big) == 3 and max(big) < min(small)
    assert small == list(range(min(small), max(small) + 1))  # one run


@pytest.mark.parametrize("ext", [".zarr.zip", ".zarr"])
@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("scheduler", ["threads", "sync"])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failed_disk_write_fails_the_ingest_and_leaves_nothing(
    tmp_path, monkeypatch, ext, on_error, scheduler, fail_at
):
    """The shard writers (a writer thread for a zip or a staging folder) raise the disk's
    error from to_zarr, naming the store; nothing that looks like a store is left."""
    import errno

    import daskimg as di
    from daskimg.store import directio
    from daskimg.testing import make_image_folder

    src = tmp_path / "src"
    make_image_folder(src, n=60, size=(64, 48), classes=("a", "b"))  # 29 MB of pixels:
    real_write = os.write  # a zip is 3 direct writes of 8 MiB and its tail, a folder 15 files
    calls = []

    def failing_write(fd, data):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.startswith(str(tmp_path / "out")) and not name.endswith(".lock"):
            calls.append(1)
            if len(calls) >= fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(directio.os, "write", failing_write)
    target = tmp_path / "out" / f"s{ext}"
    with dask.config.set(scheduler=scheduler), pytest.raises(OSError, match="No space") as e:
        di.to_zarr(
            di.from_folder(src, size=(400, 400), on_error=on_error),
            target,
            chunks=4,
            shard_chunks=1,
            codec="none",
        )
    monkeypatch.undo()
    assert str(target) in str(e.value)
    assert e.value.errno == errno.ENOSPC
    assert calls
    assert os.listdir(tmp_path / "out") == []  # no store, no staging left
    with pytest.raises(FileNotFoundError):
        di.open_zarr(target)


def test_a_folder_writer_sent_to_another_process_writes_there(tmp_path):
    """Pickled (the processes scheduler), the folder writer is a plain write_file: the task
    that holds it writes its shard before it returns."""
    import pickle

    from daskimg.store.shardwrite import FolderWriter

    w = FolderWriter(str(tmp_path))
    try:
        put = pickle.loads(pickle.dumps(w))
        put("x/c/0", [b"abc", np.arange(3, dtype="<u2")])
        assert (tmp_path / "x" / "c" / "0").read_bytes() == b"abc" + np.arange(
            3, dtype="<u2"
        ).tobytes()
        w("x/c/1", [b"def"])  # here: by its thread, written by finish()
        w.finish()
        assert (tmp_path / "x" / "c" / "1").read_bytes() == b"def"
    finally:
        w.close()


def test_a_lock_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    import errno

    from daskimg.store import location

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(location.os, "write", full_disk)
    target = str(tmp_path / "s.zarr.zip")
    with (
        pytest.raises(OSError, match=r"writing the lock .*s\.zarr\.zip\.lock.* failed") as e,
        location.write_lock(target),
    ):
        pass
    monkeypatch.undo()
    assert e.value.errno == errno.ENOSPC
    assert not os.path.exists(target + ".lock")


def _photos(n):
    """n 224x224 RGB crops of scikit-image's bundled photos with a camera's noise (sigma 3)."""
    from skimage import data as photos

    rng = np.random.default_rng(0)
    pics = [photos.astronaut(), photos.chelsea(), photos.coffee(), photos.rocket()]
    out = np.empty((n, 224, 224, 3), np.uint8)
    for i in range(n):
        pic = pics[i % len(pics)]
        y, x = (i * 37) % (pic.shape[0] - 224), (i * 53) % (pic.shape[1] - 224)
        noisy = pic[y : y + 224, x : x + 224] + rng.normal(0, 3, (224, 224, 3))
        out[i] = np.clip(np.round(noisy), 0, 255)
    return out


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.parametrize("chunk_len", [32, 4])  # 4.8 MB chunks are probed, 0.6 MB ones compressed
def test_chunks_that_compress_by_little_are_stored_uncompressed_in_their_blosc_frame(
    tmp_path, codec, chunk_len
):
    # with lz4, a chunk of photos (it saves 0.1% of these) is kept raw inside its Blosc
    # frame (the "memcpyed" flag); one of masks (saves ~99%) compressed; plain zarr reads
    # both, and the shard of photos is as long as the pixels plus the frames' headers.
    # zstd, chosen for size, keeps the 8% it saves on the photos
    n = 64
    pics = _photos(n)
    masks = np.zeros_like(pics)
    masks[:, 60:150, 40:200] = 7
    sizes = {}
    for name, data in (("photos", pics), ("masks", masks)):
        ours = _make(tmp_path / name, n, data.shape[1:], "uint8", codec, chunk_len, 64)
        enc = ShardEncoder.of("test", "x", _meta(ours))
        assert enc is not None and enc.blosc is not None
        flags = {
            memoryview(enc.encode_chunk(data[i : i + chunk_len])[0])[2] & 0x02
            for i in (0, chunk_len)
        }
        put = lambda key, pieces, name=name: write_file(str(tmp_path / name), key, pieces)  # noqa: E731
        dask.compute(
            *shard_writes(da.from_array(data, chunks=chunk_len), enc, put), scheduler="sync"
        )
        back = zarr.open_array(str(tmp_path / name), path="x", mode="r")
        np.testing.assert_array_equal(back[...], data)
        sizes[name] = (flags, sum(len(v) for v in _files(tmp_path / name).values()))
    raw, chunks = pics.nbytes, n // chunk_len
    whole = len(Blosc(codec, 5, Blosc.NOSHUFFLE).encode(pics[:chunk_len]))  # numcodecs, the oracle
    assert whole > chunk_len * 224 * 224 * 3 * 7 / 8  # saves less than an eighth
    if codec == "lz4":  # kept raw: the pixels, each frame's header (16) and crc32c (4), the index
        assert sizes["photos"] == ({2}, raw + chunks * (16 + 4) + chunks * 16 + 4)
    else:
        assert sizes["photos"][0] == {0} and sizes["photos"][1] < raw * 0.95
    assert sizes["masks"][0] == {0} and sizes["masks"][1] < raw / 50


def test_the_probe_shuffles_wider_numbers_as_the_chunk_is_shuffled():
    # 16-bit values around 1000: byte-shuffled (as lz4 compresses a uint16 chunk) they
    # save ~29%, unshuffled bytes ~6%: the probe judges the windows as the chunk is
    # compressed, so the chunk stays compressed (it was stored raw, 41% larger)
    from daskimg.store.encode import blosc_encode

    rng = np.random.default_rng(0)
    scan = np.round(rng.normal(1000, 30, (8, 256, 256))).astype(np.uint16)
    cfg = {"cname": "lz4", "clevel": 5, "shuffle": Blosc.SHUFFLE, "blocksize": 0}
    whole = Blosc("lz4", 5, Blosc.SHUFFLE).encode(scan)  # numcodecs, the oracle
    assert len(whole) < scan.nbytes * 0.8
    body = blosc_encode(scan, cfg)
    assert not memoryview(body)[2] & 0x02 and len(body) == len(whole)
    np.testing.assert_array_equal(np.frombuffer(Blosc().decode(body), np.uint16), scan.ravel())


def test_the_probe_judges_chunks_of_real_photos_as_compressing_them_whole_would(tmp_path):
    # chunks of 32 photos (4.8 MB) of a shuffled photo library, as ingest writes them: a
    # chunk is kept compressed where Blosc-lz4 of the whole chunk (numcodecs, the oracle)
    # saves clearly more than an eighth, raw where it saves clearly less. Four windows of
    # 64 KiB (four photos' middles) kept a fifth of such chunks compressed, each at 1.06-1.13x
    # (32 windows of 8 KiB now)
    from PIL import Image

    from daskimg.store.encode import blosc_encode
    from daskimg.testing import make_photo_folder

    paths = make_photo_folder(tmp_path, n_per_class=48, size=(375, 500), seed=3)
    order = np.random.default_rng(0).permutation(len(paths))
    pixels = np.empty((len(paths), 224, 224, 3), np.uint8)
    for row, i in enumerate(order):
        with Image.open(paths[i]) as im:
            pixels[row] = np.asarray(im.convert("RGB").resize((224, 224), Image.BILINEAR))
    cfg = {"cname": "lz4", "clevel": 5, "shuffle": Blosc.NOSHUFFLE, "blocksize": 0}
    judged = []
    for c in range(0, len(pixels), 32):
        chunk = pixels[c : c + 32]
        saving = 1 - (len(Blosc("lz4", 5, Blosc.NOSHUFFLE).encode(chunk)) - 16) / chunk.nbytes
        raw = bool(memoryview(blosc_encode(chunk, cfg))[2] & 0x02)
        judged.append((round(saving, 3), raw))
    clear = [(s, raw) for s, raw in judged if abs(s - 1 / 8) > 0.02]
    assert len(clear) >= 6, judged
    assert all(raw == (s < 1 / 8) for s, raw in clear), judged


def test_the_probe_judges_its_windows_apart_as_the_chunk_compresses_them():
    # (review) a chunk of one noise image repeated 32 times: lz4 reaches back 64 KiB, so the
    # whole chunk (numcodecs, the oracle) saves nothing and is kept raw; windows gathered
    # into one buffer matched each other across images and had it compressed for nothing
    from daskimg.store.encode import blosc_encode

    noise = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    chunk = np.ascontiguousarray(np.broadcast_to(noise, (32, 224, 224, 3)))
    cfg = {"cname": "lz4", "clevel": 5, "shuffle": Blosc.NOSHUFFLE, "blocksize": 0}
    whole = Blosc("lz4", 5, Blosc.NOSHUFFLE).encode(chunk)
    assert len(whole) > chunk.nbytes * 7 / 8
    assert memoryview(blosc_encode(chunk, cfg))[2] & 0x02  # raw in its frame


@pytest.mark.parametrize(
    ("n", "sample", "chunk_len", "shard_len"),
    [(11, (), 3, 6), (12, (), 4, 4), (5, (), 5, 5), (7, (2,), 3, 6), (6, (2, 3), 4, 4)],
)
def test_text_same_bytes_as_zarr(tmp_path, n, sample, chunk_len, shard_len):
    """Text columns (paths, class names from a CSV, several per sample) encoded as zarr's
    vlen-utf8 + zstd would: the edge chunk padded with "", non-ASCII and empty strings kept."""
    attrs = root_attrs(
        split=None, num_samples=n, classes=[], chunk_len=chunk_len, codec="lz4",
        order="source", seed=0, boxes=[], source={},
    )  # fmt: skip
    spec = [ArraySpec("paths", sample, np.dtype(object))]
    words = ["", "a/b.jpg", "çà/日本.png", "x" * 300, "tab\there", "emoji 🐱"]
    size = n * int(np.prod(sample))
    flat = [words[i % len(words)] + str(i) * (i % 3) for i in range(size)]
    data = np.array(flat, dtype=object).reshape(n, *sample)
    ref = create_arrays(str(tmp_path / "ref"), attrs, spec, n=n, shard_len=shard_len)["paths"]
    ref[...] = data.astype(np.dtypes.StringDType())
    ours = create_arrays(str(tmp_path / "ours"), attrs, spec, n=n, shard_len=shard_len)["paths"]
    enc = ShardEncoder.of("test", "paths", _meta(ours))
    assert enc is not None
    cl = chunk_len
    for k in range(enc.num_keys):
        chunks = [enc.encode_chunk(data[c * cl : (c + 1) * cl]) for c in enc.chunks_of(k)]
        write_file(str(tmp_path / "ours"), enc.key(k), enc.shard(chunks))
    assert _files(tmp_path / "ours") == _files(tmp_path / "ref")
    back = zarr.open_array(str(tmp_path / "ours"), path="paths", mode="r")[...]
    assert [str(v) for v in np.asarray(back).reshape(-1)] == flat
