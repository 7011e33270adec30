from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import store_damage as sd
import zarr
from conftest import plain_group

import daskimg as di
from daskimg.errors import IncompleteStoreError, StoreExistsError, StoreLockedError
from daskimg.storeinfo import verify
from daskimg.writeback.writer import ArrayWriter

EXTS = [".zarr.zip", ".zarr"]
D = 6  # features per sample in most tests


def feats(a: int, b: int, d: int = D) -> np.ndarray:
    """Rows a..b-1 of the oracle: row r is r + (0, 1, ..., d-1) / d (exact in float32)."""
    return (np.arange(a, b, dtype=np.float32)[:, None] + np.arange(d, dtype=np.float32) / d).astype(
        np.float32
    )


def leftovers(path) -> list[str]:
    """Staging, lock and temporary files next to a store (none once a writer is done)."""
    p = str(path)
    return [s for s in (".partial", ".lock", ".tmp") if os.path.lexists(p + s)]


def tree_digest(path) -> str:
    """A hash of every file's name and bytes under ``path`` (or of the file itself)."""
    h = hashlib.sha256()
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(p.parent)).encode() + f.read_bytes())
    return h.hexdigest()


# -- round trips -----------------------------------------------------------------------

SIZE_PATTERNS = {
    "ones": [1] * 11,
    "partial": [3, 5, 2, 7, 1],
    "chunk": [4, 4, 4, 4],  # exactly chunk-sized
    "shard": [8, 8, 8],  # exactly shard-sized
    "mixed": [1, 8, 0, 13, 4, 30, 2, 9, 1],  # crossing shards, a batch of 0, larger than a shard
}


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("sizes", list(SIZE_PATTERNS.values()), ids=list(SIZE_PATTERNS))
def test_roundtrip_matches_numpy(tmp_path, ext, sizes):
    path = tmp_path / f"f{ext}"
    arrays = {"features": ((D,), "float32"), "ids": ((), "int64"), "mask": ((2, 3), "bool")}
    rng = np.random.default_rng(len(sizes))
    appended: dict[str, list[np.ndarray]] = {n: [] for n in arrays}
    with ArrayWriter(path, arrays=arrays, chunks=4, shard_chunks=2) as w:
        start = 0
        for n in sizes:
            batch = {
                "features": feats(start, start + n),
                "ids": np.arange(start, start + n) * 7,
                "mask": rng.random((n, 2, 3)) > 0.5,
            }
            w.append(**batch)
            for k, v in batch.items():
                appended[k].append(v)
            start += n
        assert len(w) == sum(sizes)
    expected = {k: np.concatenate(v) for k, v in appended.items()}
    g = plain_group(path)  # a plain zarr reader sees the same
    for k, v in expected.items():
        np.testing.assert_array_equal(g[k][...], v)
        assert g[k].chunks[0] == 4
    ds = di.open_zarr(path)
    assert len(ds) == sum(sizes) and ds.images is None
    np.testing.assert_array_equal(ds.arrays["features"].compute(), expected["features"])
    np.testing.assert_array_equal(ds.arrays["ids"], expected["ids"])
    np.testing.assert_array_equal(ds.arrays["mask"].compute(), expected["mask"])
    a = ds.attrs
    assert a["format_version"] == 1 and a["complete"] is True
    assert a["num_samples"] == sum(sizes) and a["order"] == "source" and a["split"] is None
    assert a["classes"] == [] and set(a["created_with"]) >= {"daskimg", "zarr", "numcodecs"}
    assert verify(path) == []
    assert leftovers(path) == []
    if ext == ".zarr.zip":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        assert len(names) == len(set(names))  # no duplicate members
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    else:
        assert not [f for f in Path(path).rglob("*") if f.name.endswith((".partial", ".tmp"))]


def test_every_chunk_ends_with_crc32c(tmp_path):
    path = tmp_path / "f.zarr"
    with ArrayWriter(path, arrays={"a": ((3,), "float32"), "b": ((), "int8")}, chunks=4) as w:
        w.append(a=feats(0, 10, 3), b=np.arange(10, dtype=np.int8))
    for name in ("a", "b"):
        meta = plain_group(path)[name].metadata.to_dict()
        codecs = meta["codecs"]
        inner = (
            codecs[0]["configuration"]["codecs"]
            if codecs[0]["name"] == "sharding_indexed"
            else codecs
        )
        assert inner[-1]["name"] == "crc32c"


def test_single_array_and_defaults(tmp_path):
    path = tmp_path / "out" / "features.zarr.zip"  # the parent folder is created
    with ArrayWriter(path, shape=(D,), dtype="float32") as w:
        w.append(feats(0, 5))
        w.append(features=feats(5, 7))  # by name works too
        assert w.names == ("features",) and w.num_rows == 7
    feats_back = di.open_zarr(path).arrays["features"]
    np.testing.assert_array_equal(feats_back.compute(), feats(0, 7))


def test_a_dict_of_arrays_is_appended_by_name(tmp_path):
    # append(out) with out a dict, as a predict step returns it, was taken as one array's
    # batch and refused as "got () object"
    path = tmp_path / "preds.zarr"
    arrays = {"logits": ((3,), "float32"), "ids": ((), "int64")}
    logits = np.arange(18, dtype=np.float32).reshape(6, 3)
    with ArrayWriter(path, arrays=arrays, num_samples=6) as w:
        w.append({"logits": logits[3:], "ids": np.arange(3, 6)}, index=np.arange(3, 6))
        w.append({"ids": np.arange(3), "logits": logits[:3]}, index=np.arange(3))
        with pytest.raises(TypeError, match="not both"):
            w.append({"ids": np.arange(3)}, logits=logits[:3], index=np.arange(3))
        with pytest.raises(TypeError, match=r"missing \['logits'\]"):
            w.append({"ids": np.arange(3)}, index=np.arange(3))
    g = plain_group(path)  # oracle: plain zarr
    np.testing.assert_array_equal(g["logits"][:], logits)
    np.testing.assert_array_equal(g["ids"][:], np.arange(6))


def test_all_zero_batches_are_stored_not_skipped(tmp_path):
    # zarr skips all-zero chunks unless told otherwise; a missing chunk must mean damage
    path = tmp_path / "z.zarr"
    with ArrayWriter(path, shape=(4,), dtype="float32", chunks=4, shard_chunks=1) as w:
        w.append(np.zeros((10, 4), np.float32))
    assert sorted(p.name for p in (path / "features" / "c").iterdir()) == ["0", "1", "2"]
    assert verify(path) == []
    np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), 0)


def test_torch_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "t.zarr.zip"
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3).requires_grad_(True)
    with ArrayWriter(path, arrays={"features": ((3,), "float32"), "ids": ((), "int64")}) as w:
        w.append(features=x * 2, ids=torch.arange(4))  # needs detach
        w.append(features=torch.ones(2, 3, dtype=torch.float64), ids=torch.tensor([7, 8]))
        with pytest.raises(TypeError, match=r"expected int64.*got float32"):
            w.append(features=torch.ones(1, 3), ids=torch.ones(1))
    ds = di.open_zarr(path)
    expected = np.concatenate([np.arange(12, dtype=np.float32).reshape(4, 3) * 2, np.ones((2, 3))])
    np.testing.assert_array_equal(ds.arrays["features"].compute(), expected)
    np.testing.assert_array_equal(ds.arrays["ids"], [0, 1, 2, 3, 7, 8])


def test_dask_arrays_are_computed_in_pieces(tmp_path):
    path = tmp_path / "d.zarr"
    computed: list[int] = []

    def record(block):
        computed.append(len(block))
        return block

    x = da.from_array(feats(0, 100), chunks=((7, 13, 30, 1, 49), (D,))).map_blocks(
        record, meta=np.empty((0, D), np.float32)
    )
    with ArrayWriter(
        path, arrays={"features": ((D,), "float32"), "ids": ((), "int64")}, chunks=4, shard_chunks=2
    ) as w:
        w.append(features=x, ids=np.arange(100))  # dask beside numpy
        w.append(
            features=da.from_array(feats(100, 103).astype(np.float64)), ids=da.arange(100, 103)
        )
    ds = di.open_zarr(path)
    np.testing.assert_array_equal(ds.arrays["features"].compute(), feats(0, 103))
    np.testing.assert_array_equal(ds.arrays["ids"], np.arange(103))
    assert sorted(computed) == [1, 7, 13, 30, 49]  # each block once


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_bad_batches_are_refused_and_the_writer_stays_usable(tmp_path, ext):
    path = tmp_path / f"b{ext}"
    arrays = {"features": ((D,), "float32"), "ids": ((), "int32")}
    good = []
    with ArrayWriter(path, arrays=arrays, chunks=4, shard_chunks=2) as w:

        def ok(a, b, f_dtype=np.float32):
            w.append(features=feats(a, b).astype(f_dtype), ids=np.arange(a, b, dtype=np.int32))
            good.append((a, b))

        ok(0, 5)
        bad = [
            (
                {"features": feats(0, 3, D + 1), "ids": np.arange(3, dtype=np.int32)},
                ValueError,
                r"expected a batch of shape \(n, 6\) float32, got \(3, 7\)",
            ),
            (
                {"features": feats(0, 1)[0], "ids": np.arange(1, dtype=np.int32)},
                ValueError,
                "add a batch axis",
            ),
            (
                {"features": feats(0, 3), "ids": np.arange(4, dtype=np.int32)},
                ValueError,
                "same number of rows",
            ),
            (
                {"features": feats(0, 3).astype(int), "ids": np.arange(3, dtype=np.int32)},
                TypeError,
                r"expected float32.*got int64",
            ),
            (
                {"features": feats(0, 3), "ids": np.arange(3, dtype=np.int64)},
                TypeError,
                r"expected int32.*got int64",
            ),
            (
                {"features": feats(0, 3), "ids": np.arange(3, dtype=np.float32)},
                TypeError,
                "got float32",
            ),
            (
                {"features": feats(0, 3), "ids": np.arange(3, dtype=np.uint32)},
                TypeError,
                "got uint32",
            ),
            ({"features": feats(0, 3)}, TypeError, r"missing \['ids'\]"),
            (
                {"features": feats(0, 3), "ids": np.arange(3, dtype=np.int32), "x": 1},
                TypeError,
                r"unknown \['x'\]",
            ),
        ]
        for kwargs, err, msg in bad:
            with pytest.raises(err, match=msg):
                w.append(**kwargs)
            assert len(w) == 5
        with pytest.raises(TypeError, match="name them all"):
            w.append(feats(0, 3))
        ok(5, 14, np.float64)  # float64 -> float32 is allowed (precision only)
        ok(14, 15)
        w.append(features=feats(15, 16), ids=np.array([15], dtype=np.int16))  # safe widening
    ds = di.open_zarr(path)
    np.testing.assert_array_equal(ds.arrays["features"].compute(), feats(0, 16))
    np.testing.assert_array_equal(ds.arrays["ids"], np.arange(16))
    assert ds.arrays["ids"].dtype == np.int32


def test_failing_dask_batch_is_undone(tmp_path):
    path = tmp_path / "u.zarr.zip"

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 3:
            raise RuntimeError("model crashed")
        return block

    with ArrayWriter(path, shape=(D,), dtype="float32", chunks=4, shard_chunks=2) as w:
        w.append(feats(0, 5))  # 5 rows: the unfinished shard holds 5
        x = da.from_array(feats(100, 140), chunks=(10, D)).map_blocks(boom, dtype=np.float32)
        with pytest.raises(RuntimeError, match="model crashed"):
            w.append(x)  # shards were written before the failure; all undone
        assert len(w) == 5
        w.append(feats(5, 30))
    np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), feats(0, 30))
    assert verify(path) == []


class _FailingArray:
    """Wraps a zarr array; the ``fail_at``-th shard write raises (a full disk, say)."""

    def __init__(self, arr, fail_at):
        self.arr, self.fail_at, self.calls = arr, fail_at, 0

    def __setitem__(self, key, value):
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError(28, "No space left on device")
        self.arr[key] = value

    def __getattr__(self, name):
        return getattr(self.arr, name)


@pytest.mark.parametrize("threads", [0, 2])
def test_failed_shard_write(tmp_path, threads):
    path = tmp_path / "w.zarr.zip"
    spec = {"shape": (D,), "dtype": "float32", "chunks": 4, "shard_chunks": 1}
    w = ArrayWriter(path, **spec, threads=threads, checkpoint_every=None)
    w.append(feats(0, 6))
    w.checkpoint()
    col = w._sink.columns["features"]
    col.arr = _FailingArray(col.arr, fail_at=2)
    w.append(feats(6, 9))  # shard 1 written
    if threads == 0:
        # written in the caller: the batch is undone and the writer goes on
        with pytest.raises(OSError, match="No space"):
            w.append(feats(9, 20))
        assert len(w) == 9
        w.append(feats(9, 20))
        w.close()
        np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), feats(0, 20))
        return
    # in the background: it shows when the writer waits for that shard, and the rows
    # since the last checkpoint are lost; the writer stops and releases the store
    with pytest.raises(OSError, match="No space"):
        w.append(feats(9, 20))  # 3 shards: the third waits for the first of them
    with pytest.raises(di.errors.DaskImgError, match=r"cannot continue.*resume=True.*\(6 rows\)"):
        w.append(feats(20, 21))
    with ArrayWriter(path, **spec, resume=True) as w:
        assert len(w) == 6
        w.append(feats(6, 20))
    np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), feats(0, 20))


def test_shape_and_name_checks_at_creation(tmp_path):
    p = tmp_path / "x.zarr"
    with pytest.raises(TypeError, match="pass shape= and dtype="):
        ArrayWriter(p)
    with pytest.raises(TypeError, match="not supported"):
        ArrayWriter(p, shape=(), dtype=object)
    with pytest.raises(ValueError, match="reserved"):
        ArrayWriter(p, name="images", shape=(), dtype="int64")
    with pytest.raises(ValueError, match=r"'index' is reserved.*append\(\)'s keyword"):
        ArrayWriter(p, name="index", shape=(), dtype="int64")
    # a store holding an 'ok' it wrote could not be stored again (to_zarr refuses the name)
    with pytest.raises(ValueError, match=r"'ok' is reserved: a store's 'ok' says which files"):
        ArrayWriter(p, name="ok", shape=(), dtype=bool)
    with pytest.raises(ValueError, match=r"'paths' holds one string per sample.*\(\(\), str\)"):
        ArrayWriter(p, name="paths", shape=(), dtype="int64")
    with pytest.raises(ValueError, match=r"one string per sample: shape \(\), not \(2,\)"):
        ArrayWriter(p, name="names", shape=(2,), dtype=str)
    with pytest.raises(ValueError, match="'labels' holds one integer"):
        ArrayWriter(p, name="labels", shape=(2,), dtype="int64")
    with pytest.raises(ValueError, match="must end in"):
        ArrayWriter(tmp_path / "x.h5", shape=(), dtype="int64")
    assert not p.exists() and leftovers(p) == []


def test_labels_are_checked_against_classes(tmp_path):
    path = tmp_path / "l.zarr.zip"
    with ArrayWriter(
        path, arrays={"features": ((2,), "float32"), "labels": ((), "int64")}, classes=["a", "b"]
    ) as w:
        with pytest.raises(ValueError, match=r"0\.\.1 for 2 classes; this batch has 0\.\.2"):
            w.append(features=np.zeros((3, 2)), labels=np.array([0, 1, 2]))
        w.append(features=np.zeros((2, 2)), labels=np.array([1, 0]))
    ds = di.open_zarr(path)
    assert ds.classes == ("a", "b") and ds.labels.tolist() == [1, 0]


def test_empty_writer_is_refused_and_leaves_nothing(tmp_path):
    path = tmp_path / "e.zarr.zip"
    with (
        pytest.raises(ValueError, match="nothing was appended"),
        ArrayWriter(path, shape=(2,), dtype="float32"),
    ):
        pass
    assert not path.exists() and leftovers(path) == []
    with ArrayWriter(path, shape=(2,), dtype="float32") as w:  # the path is free again
        w.append(np.ones((1, 2)))
    assert len(di.open_zarr(path)) == 1


# -- locking, overwrite ------------------------------------------------------------------


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "s.zarr.zip"
    with ArrayWriter(path, shape=(2,), dtype="float32") as w:
        # in this very process (a notebook cell run again): said so, not "another process"
        with pytest.raises(StoreLockedError, match=r"this process is writing .* already"):
            ArrayWriter(path, shape=(2,), dtype="float32")
        w.append(np.ones((3, 2)))
    assert len(di.open_zarr(path)) == 3


def test_third_writer_is_refused_too(tmp_path):
    path = tmp_path / "s.zarr"
    with ArrayWriter(path, shape=(2,), dtype="float32") as w:
        for _ in range(2):
            with pytest.raises(StoreLockedError):
                ArrayWriter(path, shape=(2,), dtype="float32")
        w.append(np.ones((3, 2)))


@pytest.mark.parametrize("ext", EXTS)
def test_existing_store_needs_overwrite_and_stays_readable_until_close(tmp_path, ext):
    path = tmp_path / f"o{ext}"
    with ArrayWriter(path, shape=(2,), dtype="float32") as w:
        w.append(np.ones((3, 2)))
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        ArrayWriter(path, shape=(2,), dtype="float32")
    with ArrayWriter(path, shape=(2,), dtype="float32", overwrite=True) as w:
        w.append(np.zeros((5, 2)))
        assert len(di.open_zarr(path)) == 3  # the old store, until close
    np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), np.zeros((5, 2)))
    assert leftovers(path) == []


# -- checkpoints and resume --------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_exception_in_with_block_keeps_a_checkpoint_to_resume(tmp_path, ext):
    path = tmp_path / f"r{ext}"
    spec = {
        "arrays": {"features": ((D,), "float32"), "ids": ((), "int64")},
        "chunks": 4,
        "shard_chunks": 2,
    }

    def crash():
        with ArrayWriter(path, **spec, checkpoint_every=None) as w:
            for a, b in [(0, 3), (3, 12), (12, 13)]:
                w.append(features=feats(a, b), ids=np.arange(a, b))
            raise KeyError("the model loop failed")

    with pytest.raises(KeyError):
        crash()
    assert not path.exists()
    with pytest.raises(IncompleteStoreError, match="never finished"):
        di.open_zarr(path)
    with ArrayWriter(path, **spec, resume=True) as w:
        assert len(w) == w.durable_rows == 13
        w.append(features=feats(13, 20), ids=np.arange(13, 20))
    ds = di.open_zarr(path)
    np.testing.assert_array_equal(ds.arrays["features"].compute(), feats(0, 20))
    np.testing.assert_array_equal(ds.arrays["ids"], np.arange(20))
    assert verify(path) == [] and leftovers(path) == []


def test_resume_checks_arguments_and_resume_false_starts_over(tmp_path):
    path = tmp_path / "r.zarr.zip"
    w = ArrayWriter(path, shape=(D,), dtype="float32", chunks=4, checkpoint_every=0)
    w.append(feats(0, 6))
    assert w.durable_rows == 6  # checkpoint_every=0: after every append
    w.append(feats(6, 7))
    del w  # abandoned without close: the lock is released, the checkpoint stays
    with pytest.raises(ValueError, match=r"cannot resume.*arrays"):
        ArrayWriter(path, shape=(D + 1,), dtype="float32", resume=True)
    with pytest.raises(ValueError, match=r"cannot resume.*chunks=4"):
        ArrayWriter(path, shape=(D,), dtype="float32", chunks=5, resume=True)
    w = ArrayWriter(path, shape=(D,), dtype="float32", resume=True)
    assert len(w) == 7 and w.chunk_len == 4
    w.checkpoint()
    del w
    with ArrayWriter(path, shape=(D,), dtype="float32") as w:  # resume=False: start over
        assert len(w) == 0
        w.append(feats(50, 52))
    np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), feats(50, 52))


@pytest.mark.parametrize("damage", ["manifest", "tail", "tail-bytes", "rows"])
def test_resume_refuses_damaged_staging_instead_of_dropping_or_misplacing_rows(tmp_path, damage):
    # an unreadable writer.json (written atomically: damage, never a kill) made resume start
    # over at 0 rows, the 13 saved ones dropped with a log line; a missing tail file gave a
    # bare FileNotFoundError, rows raised by hand a bare broadcast ValueError at close
    import json

    path = tmp_path / "r.zarr.zip"
    w = ArrayWriter(path, shape=(D,), dtype="float32", chunks=4, shard_chunks=2,
                    checkpoint_every=0)  # fmt: skip
    w.append(feats(0, 13))
    del w
    staging = Path(f"{path}.partial")
    manifest = staging / "writer.json"
    if damage == "manifest":
        manifest.write_bytes(manifest.read_bytes()[:100])
        said = "writer.json is damaged"
    elif damage == "tail":
        (tail,) = staging.glob("tail-*.bin")
        tail.unlink()
        said = "staged files are damaged or missing"
    elif damage == "tail-bytes":  # a bit flipped on disk: the saved rows were published as read
        (tail,) = staging.glob("tail-*.bin")
        data = bytearray(tail.read_bytes())
        data[7] ^= 0x10
        tail.write_bytes(bytes(data))
        said = rf"saved rows of 'features' \({tail.name}\) do not match their checksum"
    else:
        record = json.loads(manifest.read_text())
        record["rows"] = 15
        manifest.write_text(json.dumps(record))
        said = "records 15 rows, but 1 shards of 8 and 5 more"
    with pytest.raises(di.errors.DaskImgError, match=said):
        ArrayWriter(path, shape=(D,), dtype="float32", resume=True)
    assert staging.is_dir()  # nothing discarded: the user decides
    with ArrayWriter(path, shape=(D,), dtype="float32", resume=False) as w:
        w.append(feats(0, 2))
    np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), feats(0, 2))


@pytest.mark.parametrize("ext", EXTS)
def test_a_store_reached_through_a_link_is_written_where_it_is(tmp_path, ext, indexed_set):
    # ArrayWriter(link, mode="a") replaced the link with a copy of the store holding the new
    # column; the store the link pointed to (on a big disk) never got it
    real = tmp_path / "big" / f"train{ext}"
    real.parent.mkdir()
    di.to_zarr(indexed_set, real, chunks=8)
    link = tmp_path / f"train{ext}"
    link.symlink_to(real)
    n = len(indexed_set)
    with ArrayWriter(link, name="pred", shape=(), dtype="float32", mode="a") as w:
        w.append(np.arange(n, dtype=np.float32) / 2, index=np.arange(n))
    assert link.is_symlink()
    np.testing.assert_array_equal(plain_group(real)["pred"][...], np.arange(n) / 2)  # oracle
    # so does a store written again through it
    di.to_zarr(indexed_set, link, chunks=4, overwrite=True)
    assert link.is_symlink() and plain_group(real)["images"].chunks[0] == 4
    # a link to a name of no store kind (a Hugging Face or DVC cache blob) reads as named
    blob = tmp_path / "blobs" / "9f86d081"
    blob.parent.mkdir()
    os.replace(real, blob)
    named = tmp_path / f"snap{ext}"
    named.symlink_to(blob)
    assert len(di.open_zarr(named)) == n and verify(named) == []


@pytest.mark.parametrize("closed", [False, True])
def test_a_writer_never_closed_says_so_at_exit(tmp_path, closed):
    # a script that appended every row and forgot close() exited 0 with nothing on stderr,
    # no store and 0 rows to resume (checkpoint_every not reached)
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "p.zarr.zip"
    script = textwrap.dedent(f"""
        import numpy as np
        import daskimg as di
        w = di.ArrayWriter({str(path)!r}, shape=(), dtype="float32")
        w.append(np.arange(23, dtype=np.float32))
        {"w.close()" if closed else ""}
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert path.exists() == closed  # the oracle: whether a store was published
    said = "was never closed: its 23 rows are in no store (0 saved at its last checkpoint"
    assert (said in run.stderr) == (not closed), run.stderr


def test_a_writer_of_another_column_keeps_an_unfinished_write_of_one(tmp_path, indexed_set):
    # the staging folder is the store's: a quick writer of another column (mode="a") threw
    # away a long write's 15 checkpointed rows, said in a log line only
    store = di.to_zarr(indexed_set, tmp_path / "s.zarr.zip", chunks=8)
    n = len(indexed_set)
    w = ArrayWriter(store, name="pred", shape=(), dtype="float32", mode="a", checkpoint_every=0)
    w.append(np.arange(15, dtype=np.float32), index=np.arange(15))
    w._abandon()  # a job stopped: its checkpoint stays
    with pytest.raises(di.errors.StoreExistsError, match=r"unfinished write of \['pred'\] with 15"):
        ArrayWriter(store, name="brightness", shape=(), dtype="float32", mode="a")
    with ArrayWriter(store, name="pred", shape=(), dtype="float32", mode="a", resume=True) as w:
        assert len(w) == 15
        w.append(np.arange(15, n, dtype=np.float32), index=np.arange(15, n))
    with ArrayWriter(store, name="brightness", shape=(), dtype="float32", mode="a") as w:
        w.append(np.ones(n, np.float32), index=np.arange(n))
    g = plain_group(store)  # the oracle: plain zarr
    np.testing.assert_array_equal(g["pred"][...], np.arange(n))
    np.testing.assert_array_equal(g["brightness"][...], np.ones(n))


def test_resuming_after_the_store_was_replaced_says_only_resume_false_helps(tmp_path, indexed_set):
    # "Pass the same arguments" when the arguments were the same: the store had changed
    store = di.to_zarr(indexed_set, tmp_path / "s.zarr.zip", chunks=8)
    w = ArrayWriter(store, name="pred", shape=(), dtype="float32", mode="a", checkpoint_every=0)
    w.append(np.arange(5, dtype=np.float32), index=np.arange(5))
    w._abandon()
    di.to_zarr(indexed_set, tmp_path / "other.zarr.zip", chunks=8, seed=1)
    os.replace(tmp_path / "other.zarr.zip", store)
    with pytest.raises(ValueError, match=r"replaced or rewritten since.*resume=False") as e:
        ArrayWriter(store, name="pred", shape=(), dtype="float32", mode="a", resume=True)
    assert "same arguments" not in str(e.value)


def test_rows_of_different_shapes_are_named(tmp_path):
    # numpy's "setting an array element with a sequence ... inhomogeneous shape"
    with ArrayWriter(tmp_path / "q.zarr.zip", name="q", shape=(3,), dtype="float32") as w:
        for ragged in ([np.zeros(3), np.ones(2)], [[1, 2, 3], [1, 2]], (np.zeros(3), 5.0)):
            with pytest.raises(ValueError, match=r"q: .*row 0 has shape \(3,\), row 1 \(2?,?\)"):
                w.append(ragged)
        w.append([np.zeros(3), np.ones(3)])  # refused batches left nothing behind
    with ArrayWriter(tmp_path / "r.zarr.zip", name="r", shape=(2, 2), dtype="float32") as w:
        # a row ragged in itself: numpy's words, which say where (not "row 1 has shape (2,)")
        with pytest.raises(ValueError, match=r"inhomogeneous shape after 2 dimensions"):
            w.append([[[1, 2], [3, 4]], [[1, 2], [3]]])
        w.append(np.ones((1, 2, 2), np.float32))
    np.testing.assert_array_equal(
        plain_group(tmp_path / "q.zarr.zip")["q"][...], [[0] * 3, [1] * 3]
    )


def test_verify_of_an_unfinished_new_store_names_its_write(tmp_path):
    # verify said only "no store at ...", where open_zarr names the write and resume=True
    path = tmp_path / "u.zarr.zip"
    w = ArrayWriter(path, shape=(D,), dtype="float32", checkpoint_every=0)
    w.append(feats(0, 3))
    w._abandon()
    with pytest.raises(IncompleteStoreError, match=r"never finished.*resume=True"):
        verify(path)
    with pytest.raises(FileNotFoundError, match="no store at"):
        verify(tmp_path / "none.zarr.zip")


def test_resume_without_anything_to_resume_starts_fresh(tmp_path):
    path = tmp_path / "n.zarr"
    with ArrayWriter(path, shape=(1,), dtype="int64", resume=True) as w:
        assert len(w) == 0
        w.append(np.arange(3)[:, None])
    assert di.open_zarr(path).arrays["features"].compute().ravel().tolist() == [0, 1, 2]


_CHILD = r"""
import sys
import numpy as np
from daskimg.writeback import ArrayWriter

path, resume, mode = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
SIZES = [int(s) for s in sys.argv[4].split(",")]
bounds = np.cumsum([0] + SIZES).tolist()
D = 256

def feats(a, b):
    return (np.arange(a, b, dtype=np.float32)[:, None] + np.arange(D, dtype=np.float32) / D)

if mode == "w":  # rows in the order appended
    w = ArrayWriter(path, arrays={"features": ((D,), "float32"), "ids": ((), "int64")},
                    chunks=16, shard_chunks=2, checkpoint_every=None, resume=resume)
    order = range(len(SIZES))
else:  # rows placed by index, batches in a scrambled order, each reversed
    w = ArrayWriter(path, name="features", shape=(D,), dtype="float32", mode="a",
                    checkpoint_every=None, resume=resume)
    order = np.random.default_rng(0).permutation(len(SIZES)).tolist()
print("start", len(w), flush=True)
todo = set(w.missing().tolist()) if mode == "a" else set(range(len(w), bounds[-1]))
for k, b in enumerate(order):
    a, z = bounds[b], bounds[b + 1]
    if a not in todo:
        continue
    if mode == "w":
        w.append(features=feats(a, z), ids=np.arange(a, z))
    else:
        w.append(feats(a, z)[::-1], index=np.arange(a, z)[::-1])
    if k % 3 == 2:
        print("durable", w.checkpoint(), flush=True)
    else:
        print("appended", z, flush=True)
print("closing", flush=True)
w.close()
print("closed", flush=True)
"""

KILL_SIZES = [5, 40, 1, 17, 33, 64, 2, 31, 50, 9, 16, 70, 3, 45]


def _run_and_kill(script: Path, path: Path, mode: str, sizes: list[int], after: int, delay: float):
    """Run the child writer, SIGKILL it ``delay`` s after its ``after``-th line; return the lines."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), "0", mode, ",".join(map(str, sizes))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.split())
        if len(lines) > after:
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines += [ln.split() for ln in proc.stdout.read().splitlines()]
    # killed, or finished before the kill; never a failure of its own
    assert proc.returncode == -signal.SIGKILL or (proc.returncode == 0 and ["closed"] in lines)
    return lines


KILLS = [  # (kind, after line, delay): mid-appends, mid-checkpoint, mid-close
    (".zarr.zip", 0, 0.0),
    (".zarr.zip", 5, 0.005),
    (".zarr.zip", len(KILL_SIZES) + 1, 0.0),
    (".zarr.zip", len(KILL_SIZES) + 1, 0.03),
    (".zarr", 3, 0.002),
    (".zarr", len(KILL_SIZES) + 1, 0.01),
]


def test_kill_9_keeps_whole_checkpointed_batches(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    bounds = np.cumsum([0, *KILL_SIZES])
    total = int(bounds[-1])
    checkpoints = {0, total} | {int(bounds[b + 1]) for b in range(len(KILL_SIZES)) if b % 3 == 2}
    paths = [tmp_path / f"k{i}{kind}" for i, (kind, _, _) in enumerate(KILLS)]
    with concurrent.futures.ThreadPoolExecutor(len(KILLS)) as pool:
        runs = list(
            pool.map(
                lambda a: _run_and_kill(script, a[0], "w", KILL_SIZES, a[1][1], a[1][2]),
                zip(paths, KILLS, strict=True),
            )
        )
    spec = {
        "arrays": {"features": ((256,), "float32"), "ids": ((), "int64")},
        "chunks": 16,
        "shard_chunks": 2,
    }
    for path, lines in zip(paths, runs, strict=True):
        if ["closed"] in lines:
            continue  # finished before the kill
        durable = max([int(ln[1]) for ln in lines if ln[0] == "durable"], default=0)
        if path.exists():  # killed after the store moved into place: it is whole
            got = di.open_zarr(path)
            assert len(got) == total
        else:
            with pytest.raises(
                (IncompleteStoreError, FileNotFoundError), match=r"never finished|no store"
            ):
                di.open_zarr(path)
            with ArrayWriter(path, **spec, resume=True) as w:
                kept = len(w)
                assert kept in checkpoints and kept >= durable, (kept, durable, lines)
                for a, b in itertools.pairwise(bounds):
                    if a >= kept:
                        w.append(features=feats(a, b, 256), ids=np.arange(a, b))
        ds = di.open_zarr(path)
        np.testing.assert_array_equal(ds.arrays["features"].compute(), feats(0, total, 256))
        np.testing.assert_array_equal(ds.arrays["ids"], np.arange(total))
        assert verify(path) == []


def test_kill_9_while_adding_a_column_leaves_the_store_usable_and_resumable(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    n = 120
    ds = di.ImageSet(np.zeros((n, 4, 4, 3), np.uint8), np.arange(n) % 3, classes=["a", "b", "c"])
    sizes = [7, 33, 20, 41, 19]
    kills = [  # mid-appends, mid-checkpoint, mid-close
        (".zarr.zip", 1, 0.0),
        (".zarr", 3, 0.002),
        (".zarr.zip", len(sizes) + 1, 0.0),
        (".zarr.zip", len(sizes) + 1, 0.04),
        (".zarr", len(sizes) + 1, 0.01),
    ]
    paths = []
    for i, (kind, _, _) in enumerate(kills):
        paths.append(tmp_path / f"a{i}{kind}")
        di.to_zarr(ds, paths[-1], chunks=16, order="source")
    before = [tree_digest(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(len(kills)) as pool:
        runs = list(
            pool.map(
                lambda a: _run_and_kill(script, a[0], "a", sizes, a[1][1], a[1][2]),
                zip(paths, kills, strict=True),
            )
        )
    for path, digest, lines in zip(paths, before, runs, strict=True):
        got = di.open_zarr(path)  # always opens: the old store or the new one
        if "features" in got.arrays:
            np.testing.assert_array_equal(got.arrays["features"].compute(), feats(0, n, 256))
        else:
            assert ["closed"] not in lines
            assert tree_digest(path) == digest  # untouched
        if ["closed"] not in lines:  # killed: resume=True keeps the last checkpoint's rows
            durable = max([int(ln[1]) for ln in lines if ln[0] == "durable"], default=0)
            out = subprocess.run(
                [sys.executable, str(script), str(path), "1", "a", ",".join(map(str, sizes))],
                capture_output=True,
                text=True,
            )
            if out.returncode:  # finished before the kill: resume says so
                assert "features" in got.arrays, out.stderr
                assert "found no unfinished write" in out.stderr
            else:
                assert int(out.stdout.split()[1]) >= durable
                assert out.stdout.splitlines()[-1] == "closed"
        np.testing.assert_array_equal(plain_group(path)["features"][...], feats(0, n, 256))
        np.testing.assert_array_equal(
            di.open_zarr(path).arrays["features"].compute(), feats(0, n, 256)
        )
        assert verify(path) == [] and leftovers(path) == []


# -- adding arrays to a store ------------------------------------------------------------


@pytest.mark.parametrize("ext", EXTS)
def test_add_features_to_a_split_store_then_train_a_head(tmp_path, ext, indexed_set):
    path = tmp_path / f"train{ext}"
    di.to_zarr(indexed_set, path, chunks=10, shard_chunks=2, seed=3, split="train")
    store_idx = di.open_zarr(path).arrays["idx"]  # the store's (shuffled) order
    labels = indexed_set.labels
    n, k = len(indexed_set), 4
    # features: the sample index, then a noisy one-hot of its label (what a model would give)
    rng = np.random.default_rng(0)
    oracle = np.zeros((n, 1 + k), np.float32)
    oracle[:, 0] = np.arange(n)
    oracle[np.arange(n), 1 + labels] = 3.0
    oracle[:, 1:] += rng.normal(0, 0.3, (n, k)).astype(np.float32)
    with ArrayWriter(
        path, name="features", shape=(1 + k,), dtype="float32", mode="a", order="store"
    ) as w:
        # stream in the store's order, as a model reading it unshuffled in one process does
        for images, idx in di.BatchIterator(
            path, batch_size=16, shuffle=False, arrays=("images", "idx")
        ):
            assert len(images) == len(idx)
            w.append(oracle[idx])
    ds = di.open_zarr(path)
    assert set(ds.arrays) == {"images", "labels", "paths", "idx", "features"}
    assert ds.arrays["features"].chunks[0][0] == 10  # the store's chunk length
    np.testing.assert_array_equal(ds.arrays["features"].compute(), oracle[store_idx])
    assert verify(path) == [] and leftovers(path) == []

    # train a linear softmax head on (features, labels) from the store
    it = di.BatchIterator(path, batch_size=16, seed=1, arrays=("features", "labels"))
    weights = np.zeros((k, k))
    seen = []
    for _epoch in range(5):
        for f, y in it:
            np.testing.assert_array_equal(y, labels[f[:, 0].astype(int)])  # rows stay aligned
            seen.append(f[:, 0].astype(int))
            x = f[:, 1:]
            logits = x @ weights
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            weights -= 0.1 * x.T @ p / len(y)
    assert sorted(np.concatenate(seen[: len(it)]).tolist()) == list(
        range(n)
    )  # one epoch: each once
    accuracy = ((oracle[:, 1:] @ weights).argmax(1) == labels).mean()
    assert accuracy > 0.9


@pytest.mark.parametrize("ext", EXTS)
def test_add_column_row_count_must_match(tmp_path, ext, indexed_set):
    path = tmp_path / f"s{ext}"
    di.to_zarr(indexed_set, path, chunks=10, order="source")
    digest = tree_digest(path)
    n = len(indexed_set)
    w = ArrayWriter(path, name="score", shape=(), dtype="float32", mode="a", order="store")
    w.append(np.zeros(n - 3))
    with pytest.raises(ValueError, match=f"has {n} samples; {n - 3} rows are appended already"):
        w.append(np.zeros(4))
    with pytest.raises(ValueError, match=f"has {n} samples but {n - 3} rows"):
        w.close()
    assert tree_digest(path) == digest  # unchanged
    w.append(np.arange(3, dtype=np.float32))
    w.close()
    np.testing.assert_array_equal(di.open_zarr(path).columns["score"][-3:], [0, 1, 2])
    # the old arrays keep their table of chunk checksums, the new one has its own
    members = sd.read_local(path)
    attrs = json.loads(members["zarr.json"])["attributes"]["daskimg"]
    assert "score" in attrs["arrays"] and "images" in attrs["arrays"]
    for name in attrs["arrays"]:
        assert sd.recorded_crcs(members, name) == sd.chunk_crcs(members, name), name
    with pytest.raises(StoreExistsError, match="already has arrays"):
        ArrayWriter(path, name="score", shape=(), dtype="float32", mode="a")
    with pytest.raises(ValueError, match="new arrays must use the store's chunk length"):
        ArrayWriter(path, name="other", shape=(), dtype="float32", mode="a", chunks=7)
    with ArrayWriter(
        path, name="score", shape=(), dtype="float32", mode="a", overwrite=True, order="store"
    ) as w:
        w.append(np.ones(n))
    np.testing.assert_array_equal(di.open_zarr(path).columns["score"], np.ones(n))
    assert verify(path) == [] and leftovers(path) == []


def test_add_column_with_exception_leaves_store_unchanged(tmp_path, indexed_set):
    path = tmp_path / "s.zarr.zip"
    di.to_zarr(indexed_set, path, chunks=10)
    digest = tree_digest(path)
    with (
        pytest.raises(ValueError, match="rows were appended"),
        ArrayWriter(path, name="f", shape=(), dtype="float32", mode="a", order="store") as w,
    ):
        w.append(np.zeros(5))
    assert tree_digest(path) == digest
    assert len(di.open_zarr(path)) == len(indexed_set)  # still opens: the store exists


# -- the example ---------------------------------------------------------------------------


def test_features_example_runs(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import features as example
    finally:
        sys.path.pop(0)
    accuracy = example.main(tmp_path, per_class=3, epochs=2, quiet=True)
    assert 0.0 <= accuracy <= 1.0
    ds = di.open_zarr(tmp_path / "stores" / "train-features.zarr.zip")
    assert set(ds.arrays) >= {"features", "labels", "ids"}


@pytest.mark.parametrize(
    ("codec", "match"),
    [
        ("jpeg", "does not write codec='jpeg'"),
        ("jpeg:80", "does not write"),
        ("lz5", "codec must be"),
    ],
)
def test_lossy_or_unknown_codecs_are_refused_before_touching_the_disk(tmp_path, codec, match):
    with pytest.raises(ValueError, match=match):
        ArrayWriter(tmp_path / "f.zarr.zip", shape=(4,), dtype="float32", codec=codec)
    assert list(tmp_path.iterdir()) == []


# -- regressions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"), [("int64", "float64"), ("uint64", "float64"), ("int64", "float32")]
)
def test_int_to_float_that_can_round_is_refused(tmp_path, src, dst):
    # numpy calls int64 -> float64 "safe", but 2**53 + 1 comes back as 2**53
    big = np.array([2**53 + 1], dtype=src)
    assert big.astype(dst).astype(src)[0] != big[0]  # the oracle: the cast loses the value
    with ArrayWriter(tmp_path / "i.zarr", shape=(), dtype=dst) as w:
        with pytest.raises(TypeError, match=f"expected {dst}.*got {src}.*astype"):
            w.append(big)
        w.append(np.array([3], np.int16))  # int16 -> float32 or float64: exact
    np.testing.assert_array_equal(plain_group(tmp_path / "i.zarr")["features"][...], [3])


@pytest.mark.parametrize("dst", ["float16", "float32"])
def test_float_narrowing_that_overflows_is_refused(tmp_path, dst):
    finfo = np.finfo(dst)
    too_big = np.array([1.0, float(finfo.max) * 4, -np.inf, np.nan], dtype=np.float64)
    fine = np.array([1.5, -np.inf, np.nan, float(finfo.max)], dtype=np.float64)
    path = tmp_path / "f.zarr.zip"
    with ArrayWriter(path, shape=(), dtype=dst) as w:
        with pytest.raises(ValueError, match=rf"features: .*{dst}.*inf"):
            w.append(too_big)
        assert len(w) == 0
        w.append(fine)  # precision only; infinities and NaN stay what they were
    np.testing.assert_array_equal(plain_group(path)["features"][...], fine.astype(dst))


def test_close_again_after_a_failed_publish_raises(tmp_path, monkeypatch):
    from daskimg.writeback import staging as writer_staging

    path = tmp_path / "p.zarr.zip"
    w = ArrayWriter(path, shape=(2,), dtype="float32")
    w.append(feats(0, 3, 2))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(writer_staging, "publish", full_disk)
        with pytest.raises(OSError, match="No space"):
            w.close()
    assert not path.exists()
    with pytest.raises(di.errors.DaskImgError, match=r"resume=True.*\(3 rows\)"):
        w.close()  # not a silent no-op: there is no store
    with ArrayWriter(path, shape=(2,), dtype="float32", resume=True) as w:
        assert len(w) == 3
    np.testing.assert_array_equal(plain_group(path)["features"][...], feats(0, 3, 2))


@pytest.mark.parametrize("threads", [0, 2])
def test_appends_from_several_threads_keep_batches_whole(tmp_path, threads):
    path = tmp_path / "t.zarr"
    n_threads, n_batches, k = 4, 60, 3
    w = ArrayWriter(
        path,
        arrays={"x": ((5,), "int64"), "i": ((), "int64")},
        chunks=4,
        shard_chunks=2,
        threads=threads,
        checkpoint_every=0,
    )
    start = threading.Barrier(n_threads)

    def work(t):
        start.wait()
        for j in range(n_batches):
            r = t * 10_000 + j * k + np.arange(k)
            w.append(x=np.repeat(r[:, None], 5, 1), i=r)

    with concurrent.futures.ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(work, range(n_threads)))
    w.close()
    g = plain_group(path)
    x, i = g["x"][...], g["i"][...]
    expected = np.concatenate(
        [t * 10_000 + j * k + np.arange(k) for t in range(n_threads) for j in range(n_batches)]
    )
    np.testing.assert_array_equal(np.sort(i), np.sort(expected))  # every row, once
    np.testing.assert_array_equal(x, np.repeat(i[:, None], 5, 1))  # arrays stay aligned
    starts = i[::k]  # each batch's rows stay together, in order
    np.testing.assert_array_equal(i.reshape(-1, k), starts[:, None] + np.arange(k))


def test_integer_arguments_may_be_numpy_ints_but_not_fractions(tmp_path):
    path = tmp_path / "n.zarr"
    with ArrayWriter(
        path,
        shape=np.int64(3),
        dtype="float32",
        chunks=np.int64(4),
        shard_chunks=np.int32(2),
        threads=np.int64(1),
    ) as w:
        w.append(feats(0, 9, 3))
    g = plain_group(path)["features"]
    assert g.shape == (9, 3) and g.chunks == (4, 3)
    np.testing.assert_array_equal(g[...], feats(0, 9, 3))
    with pytest.raises(TypeError, match=r"arrays\['features'\].*2\.5"):
        ArrayWriter(tmp_path / "m.zarr", shape=(2.5,), dtype="float32")
    with pytest.raises(ValueError, match="chunks must be"):
        ArrayWriter(tmp_path / "m.zarr", shape=(2,), dtype="float32", chunks=4.0)
    assert leftovers(tmp_path / "m.zarr") == []


def test_array_name_zarr_json_is_refused_up_front(tmp_path):
    path = tmp_path / "z.zarr"
    with pytest.raises(ValueError, match=r"'zarr\.json'.*pick another name"):
        ArrayWriter(path, name="zarr.json", shape=(), dtype="float32")
    assert leftovers(path) == [] and not path.exists()


def test_resume_with_other_classes_is_refused(tmp_path):
    path = tmp_path / "c.zarr.zip"
    spec = {"arrays": {"labels": ((), "int64")}, "chunks": 4}
    w = ArrayWriter(path, **spec, classes=["a", "b"])
    w.append(labels=np.array([0, 1, 1]))
    w.checkpoint()
    del w
    with pytest.raises(ValueError, match=r"cannot resume.*classes=\['a', 'b'\]"):
        ArrayWriter(path, **spec, classes=["a", "b", "c"], resume=True)
    with ArrayWriter(path, **spec, resume=True) as w:  # classes left out: the write's own
        with pytest.raises(ValueError, match=r"0\.\.1 for 2 classes"):
            w.append(labels=np.array([2]))
        w.append(labels=np.array([0]))
    ds = di.open_zarr(path)
    assert ds.classes == ("a", "b")
    np.testing.assert_array_equal(plain_group(path)["labels"][...], [0, 1, 1, 0])


def test_float_wider_than_64_bits_is_refused_up_front(tmp_path):
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("longdouble is float64 here")
    path = tmp_path / "l.zarr"
    with pytest.raises(TypeError, match=r"features: dtype float128 is not supported.*float64"):
        ArrayWriter(path, shape=(), dtype=np.longdouble)
    assert leftovers(path) == [] and not path.exists()
    with ArrayWriter(path, shape=(), dtype="float64") as w:  # a longdouble batch narrows
        w.append(np.arange(3, dtype=np.longdouble) / 3)
    np.testing.assert_array_equal(plain_group(path)["features"][...], np.arange(3) / 3)


@pytest.mark.parametrize("name", ["scores.tmp", "x.partial"])
def test_resume_an_array_whose_name_ends_like_a_temporary_file(tmp_path, name):
    path = tmp_path / "t.zarr"
    spec = {"name": name, "shape": (), "dtype": "float32", "chunks": 2}
    w = ArrayWriter(path, **spec, checkpoint_every=0)
    w.append(np.arange(5.0))
    del w
    with ArrayWriter(path, **spec, resume=True) as w:
        assert len(w) == 5
        w.append(np.arange(5.0, 7.0))
    np.testing.assert_array_equal(plain_group(path)[name][...], np.arange(7.0))


def test_dask_blocks_with_other_lengths_than_declared_are_refused(tmp_path):
    path = tmp_path / "d.zarr.zip"
    # the graph says 10 rows a block, the blocks have 8: rows would shift between arrays
    short = da.from_array(feats(0, 40), chunks=(10, D)).map_blocks(
        lambda b: b[:8], dtype=np.float32
    )
    with ArrayWriter(
        path, arrays={"features": ((D,), "float32"), "ids": ((), "int64")}, chunks=4
    ) as w:
        w.append(features=feats(0, 3), ids=np.arange(3))
        with pytest.raises(
            ValueError, match=r"'features': rows \d+\.\.\d+ .*computed to an array of shape \(8, "
        ):
            w.append(features=short, ids=np.arange(3, 43))
        assert len(w) == 3
        # a short block and a long one in one piece: its row count was right, row 3 was
        # lost and row 8 stored twice
        x = feats(0, 40)

        def compensating(block_info=None):
            a, b = block_info[None]["array-location"][0]
            return x[0:3] if a == 0 else x[4:9] if a == 4 else x[a:b]

        evened = da.map_blocks(compensating, dtype=np.float32, chunks=((4,) * 10, (D,)))
        with pytest.raises(
            ValueError,
            match=r"'features': rows \d+\.\.\d+ .*computed to an array of shape \([35], ",
        ):
            w.append(features=evened, ids=np.arange(3, 43))
        assert len(w) == 3
        w.append(features=feats(3, 5), ids=np.arange(3, 5))
    g = plain_group(path)
    np.testing.assert_array_equal(g["features"][...], feats(0, 5))
    np.testing.assert_array_equal(g["ids"][...], np.arange(5))


def test_append_after_close_says_what_to_do(tmp_path):
    path = tmp_path / "c.zarr"
    with ArrayWriter(path, shape=(), dtype="float32") as w:
        w.append(np.arange(3.0))
    w.close()  # a second close of a finished writer does nothing
    with pytest.raises(ValueError, match=r"is closed.*mode='a'"):
        w.append(np.arange(1.0))
    with pytest.raises(ValueError, match=r"is closed.*mode='a'"):
        w.checkpoint()
    np.testing.assert_array_equal(plain_group(path)["features"][...], np.arange(3.0))


def test_resume_that_finds_no_checkpoint_says_why_it_starts_over(tmp_path, caplog):
    path = tmp_path / "n.zarr"
    (tmp_path / "n.zarr.partial").mkdir()  # e.g. killed before its first checkpoint
    with caplog.at_level("WARNING", logger="daskimg"):
        w = ArrayWriter(path, shape=(), dtype="float32", resume=True)
    assert "no checkpoint" in caplog.text and "resume=False" not in caplog.text
    w.append(np.arange(2.0))
    w.close()
    np.testing.assert_array_equal(plain_group(path)["features"][...], np.arange(2.0))


def test_mode_a_keeps_the_store_classes_and_refuses_others(tmp_path):
    # classes=[5 names] on a 3-class store: labels were checked against the 5, label 4 was
    # published, and the store (still 3 classes) no longer opened
    n = 24
    ds = di.ImageSet(np.zeros((n, 4, 4, 3), np.uint8), np.arange(n) % 3, classes=["a", "b", "c"])
    path = di.to_zarr(ds, tmp_path / "s.zarr.zip", chunks=8, order="source")
    before = tree_digest(path)
    with pytest.raises(
        ValueError, match=r"keeps its own classes \['a', 'b', 'c'\].*leave classes out"
    ):
        ArrayWriter(path, name="labels", shape=(), dtype="int64", mode="a", overwrite=True,
                    classes=list("qrstu"))  # fmt: skip
    assert tree_digest(path) == before and not list(tmp_path.glob("*.lock"))
    with ArrayWriter(path, name="labels", shape=(), dtype="int64", mode="a", overwrite=True) as w:
        assert w.classes == ("a", "b", "c")
        with pytest.raises(ValueError, match="labels"):
            w.append(np.full(n, 4), index=np.arange(n))
        w.append((np.arange(n) + 1) % 3, index=np.arange(n))
    np.testing.assert_array_equal(di.open_zarr(path).labels, (np.arange(n) + 1) % 3)


def test_mode_a_on_a_zip_with_a_damaged_member_names_it(tmp_path):
    # every append went through, then close() failed with zipfile's bare "Bad CRC-32 for
    # file ..." from inside shutil: no store, no advice
    n = 16
    ds = di.ImageSet(np.arange(n * 48, dtype=np.uint8).reshape(n, 4, 4, 3), np.arange(n) % 2,
                     classes=["a", "b"])  # fmt: skip
    path = di.to_zarr(ds, tmp_path / "s.zarr.zip", chunks=4, order="source")
    raw = bytearray(Path(path).read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.startswith("images/c/"))
    at = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[at : at + info.file_size] = bytes(info.file_size)  # zeroed where it lies: CRC-32 off
    Path(path).write_bytes(raw)
    before = tree_digest(path)
    w = ArrayWriter(path, name="feat", shape=(2,), dtype="float32", mode="a")
    w.append(np.zeros((n, 2), np.float32), index=np.arange(n))
    with pytest.raises(
        di.errors.ChecksumError, match=rf"member '{info.filename}' is damaged.*verify"
    ):
        w.close()
    assert tree_digest(path) == before  # left as it was


def test_resume_with_the_same_shard_chunks_works_when_the_shards_were_shortened(tmp_path):
    """Rows placed by index get shards no longer than the array (shard_chunks=8 for 3 chunks
    is 3); resume=True with the very same arguments was refused ('it was started with
    shard_chunks={'x': 3}'), leaving resume=False, which threw the written rows away."""
    path = tmp_path / "p.zarr.zip"
    kw = {"name": "x", "shape": (), "dtype": "float32", "num_samples": 10, "chunks": 4}
    w = ArrayWriter(path, shard_chunks=8, **kw)
    w.append(np.arange(5, dtype=np.float32), index=range(5))
    w.checkpoint()
    del w  # as a crash would leave it
    w = ArrayWriter(path, shard_chunks=8, resume=True, **kw)
    assert sorted(w.missing().tolist()) == list(range(5, 10))
    w.append(np.arange(5, 10, dtype=np.float32), index=range(5, 10))
    w.close()
    np.testing.assert_array_equal(di.open_zarr(path).arrays["x"], np.arange(10))
    w = ArrayWriter(tmp_path / "q.zarr.zip", shard_chunks=2, **kw)
    w.append(np.zeros(1, np.float32), index=[0])
    w.checkpoint()
    del w
    with pytest.raises(ValueError, match="shard_chunks"):  # another value is still refused
        ArrayWriter(tmp_path / "q.zarr.zip", shard_chunks=1, resume=True, **kw)


def test_masked_values_and_torch_views_numpy_cannot_take(tmp_path):
    """A masked array was stored without its mask (the values under it became real ones); a
    tensor with torch's negative bit failed with torch's own error."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "m.zarr.zip"
    with ArrayWriter(path, name="score", shape=(), dtype="float32") as w:
        with pytest.raises(ValueError, match=r"score: .*masked array with 1 masked value"):
            w.append(np.ma.array([0.9, 123.0, 0.7], mask=[0, 1, 0]))
        w.append(np.ma.array([0.9, 123.0, 0.7], mask=[0, 0, 0]))  # nothing masked: its values
        w.append(torch._neg_view(torch.tensor([1.0, 2.0])))
        # tensors numpy cannot take: named, with what to give (torch's bare errors before)
        for bad in (
            torch.zeros(2, dtype=torch.bfloat16),
            torch.zeros(2, device="meta"),
            [torch.zeros((), requires_grad=True), torch.zeros((), requires_grad=True)],
        ):
            with pytest.raises(TypeError, match=r"score: cannot convert the batch .* on the CPU"):
                w.append(bad)
    np.testing.assert_allclose(di.open_zarr(path).arrays["score"], [0.9, 123.0, 0.7, -1.0, -2.0])


def test_a_write_left_by_an_error_in_its_with_block_says_so_and_resumes(tmp_path):
    from daskimg.errors import DaskImgError

    path = tmp_path / "f.zarr.zip"
    rows = np.arange(40, dtype=np.float32).reshape(20, 2)
    w = ArrayWriter(path, name="f", shape=(2,), dtype="float32")
    with pytest.raises(RuntimeError, match="model crashed"), w:  # noqa: PT012
        w.append(rows[:12])
        raise RuntimeError("model crashed")
    for call in (w.close, lambda: w.append(rows[12:])):  # close() returned as if done
        with pytest.raises(DaskImgError, match=r"left unfinished.*resume=True"):
            call()
    with pytest.raises(IncompleteStoreError):
        di.open_zarr(path)
    with ArrayWriter(path, name="f", shape=(2,), dtype="float32", resume=True) as w:
        w.append(rows[w.num_rows :])
    np.testing.assert_array_equal(plain_group(path)["f"][:], rows)  # oracle: numpy


_FORK_EXIT = """
import os, sys
import numpy as np
from daskimg.errors import StoreLockedError
from daskimg.writeback.writer import ArrayWriter
path = sys.argv[1]
w = ArrayWriter(path, name="f", shape=(), dtype="int64")
w.append(np.arange(10))
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: the child's copy of the writer is dropped at shutdown
os.waitpid(pid, 0)
print("lock kept:", os.path.exists(path + ".lock"))
try:
    ArrayWriter(path, name="f", shape=(), dtype="int64", mode="a")
    print("second writer let in")
except StoreLockedError:
    print("second writer refused")
w.append(np.arange(10, 20))
w.close()
"""


def test_a_forked_child_exiting_leaves_the_parent_s_write_lock(tmp_path):
    # the child's shutdown unlinked the lock file, and a second writer got in and discarded
    # the first one's staging folder
    path = tmp_path / "f.zarr.zip"
    out = subprocess.run(
        [sys.executable, "-c", _FORK_EXIT, str(path)], capture_output=True, text=True, timeout=300
    )
    assert "lock kept: True" in out.stdout and "second writer refused" in out.stdout, (
        out.stdout + out.stderr
    )
    np.testing.assert_array_equal(plain_group(path)["f"][:], np.arange(20))  # oracle: numpy


_FULL = """
import resource, signal, sys
import numpy as np
from daskimg.writeback.writer import ArrayWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
w = ArrayWriter(sys.argv[1], name="f", shape=(4096,), dtype="float32", codec=sys.argv[2])
try:
    for i in range(8):
        w.append(np.random.default_rng(i).random((64, 4096), dtype=np.float32))
        if sys.argv[3] == "checkpoint":
            w.checkpoint()
    w.close()
except OSError as e:
    print(e)
"""


@pytest.mark.parametrize(("codec", "call"), [("lz4", "close"), ("none", "checkpoint")])
def test_running_out_of_room_while_writing_names_the_store_and_what_is_kept(tmp_path, codec, call):
    path = tmp_path / "f.zarr.zip"
    out = subprocess.run(
        [sys.executable, "-c", _FULL, str(path), codec, call],
        capture_output=True,
        text=True,
        timeout=300,
    )
    partial = f"{path}.partial"  # where the rows are kept, as the message says
    assert f"{path}: no room left while writing" in out.stdout, out.stdout + out.stderr
    assert f"kept in {partial!r}" in out.stdout and "resume=True" in out.stdout
    assert not path.exists() and Path(partial).is_dir()
    rows = np.concatenate(
        [np.random.default_rng(i).random((64, 4096), dtype=np.float32) for i in range(8)]
    )  # the oracle: the rows the script made
    with ArrayWriter(path, name="f", shape=(4096,), dtype="float32", codec=codec, resume=True) as w:
        w.append(rows[w.num_rows :])
    np.testing.assert_array_equal(plain_group(path)["f"][:], rows)


_FULL_AT_START = """
import resource, signal, sys
from daskimg.writeback.writer import ArrayWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
resume = sys.argv[2] == "resume"
mode = "w" if resume else sys.argv[2]
try:
    ArrayWriter(sys.argv[1], name="pred", shape=(64,), dtype="float32", mode=mode, resume=resume)
except OSError as e:
    print(e)
"""


@pytest.mark.parametrize("mode", ["a", "w", "resume"])
def test_running_out_of_room_making_a_writer_names_the_store(tmp_path, mode):
    # the file size limit (or a full disk) hit while the writer was made was a bare
    # "[Errno 27] File too large", naming no store; resuming, "its staged files are damaged
    # ... pass resume=False", which would have discarded sound rows
    path = tmp_path / "s.zarr.zip"
    images = np.random.default_rng(0).integers(0, 256, (200, 24, 24, 3), dtype=np.uint8)
    rows = np.random.default_rng(1).random((40, 64), dtype=np.float32)
    if mode == "a":
        di.to_zarr(di.ImageSet(images, np.arange(200) % 2), path, order="source")
    if mode == "resume":  # an unfinished write with a checkpoint
        w = ArrayWriter(path, name="pred", shape=(64,), dtype="float32")
        w.append(rows[:20])
        w.checkpoint()
        w._abandon()
    staged = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    before = {p.name for p in tmp_path.iterdir()}
    limit = 100 if mode == "w" else 200 if mode == "resume" else 30000
    out = subprocess.run(
        [sys.executable, "-c", _FULL_AT_START, str(path), mode, str(limit)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"{path}: no room left to start writing" in out.stdout, out.stdout + out.stderr
    assert "no rows were written and a store there is as it was" in out.stdout
    assert {p.name for p in tmp_path.iterdir()} == before  # nothing left behind
    if mode == "a":  # the store as it was (the oracle: plain zarr and the pixels written)
        np.testing.assert_array_equal(plain_group(path)["images"][:], images)
        assert "pred" not in plain_group(path)
    if mode == "resume":  # kept, as said: resumed with room, the rows are all there
        assert f"the unfinished write in '{path}.partial' is kept" in out.stdout
        assert set(staged) <= {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
        with ArrayWriter(path, name="pred", shape=(64,), dtype="float32", resume=True) as w:
            assert w.num_rows == 20
            w.append(rows[20:])
        np.testing.assert_array_equal(plain_group(path)["pred"][:], rows)  # oracle: numpy


def test_out_of_memory_closing_a_writer_says_what_is_kept(tmp_path, monkeypatch):
    # (a probe under RLIMIT_AS) an empty MemoryError from close(), naming no store
    from daskimg.writeback import lifecycle

    path = tmp_path / "f.zarr.zip"
    rows = np.arange(40, dtype=np.float32).reshape(20, 2)
    w = ArrayWriter(path, name="f", shape=(2,), dtype="float32")
    w.append(rows[:10])
    w.checkpoint()
    w.append(rows[10:])

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(lifecycle.OpenWrite, "finish", no_memory)
    with pytest.raises(MemoryError) as e:
        w.close()
    said = "\n".join(getattr(e.value, "__notes__", []))
    assert f"ArrayWriter({str(path)!r}).close ran out of memory" in said
    assert f"at least the rows of its last checkpoint (10) are kept in '{path}.partial'" in said
    monkeypatch.undo()
    w._abandon()  # (what leaving a with-block does: checkpoints what it can)
    with ArrayWriter(path, name="f", shape=(2,), dtype="float32", resume=True) as again:
        assert again.num_rows >= 10
        again.append(rows[again.num_rows :])
    np.testing.assert_array_equal(plain_group(path)["f"][:], rows)  # the oracle: numpy


def test_to_zarr_keeps_an_unfinished_array_writer_write_unless_told(tmp_path, caplog):
    import logging

    path = tmp_path / "f.zarr.zip"
    w = ArrayWriter(path, name="f", shape=(2,), dtype="float32")
    w.append(np.ones((5, 2), np.float32))
    w.checkpoint()
    del w  # a crash: its checkpoint is what resume=True continues
    ds = di.ImageSet(np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(StoreExistsError, match=r"unfinished ArrayWriter write.*overwrite=True"):
        di.to_zarr(ds, path)
    again = ArrayWriter(path, name="f", shape=(2,), dtype="float32", resume=True)
    assert again.num_rows == 5  # still there
    del again
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.to_zarr(ds, path, overwrite=True)
    assert "discarding the unfinished ArrayWriter write" in caplog.text
    assert len(di.open_zarr(path)) == 4


def test_a_dask_batch_whose_task_fails_names_the_writer_and_what_it_holds(tmp_path):
    # the task's own error came with no word of the writer, nor that the batch was not added
    import dask.array as da

    def fail(block):
        raise RuntimeError("the model failed")

    path = tmp_path / "f.zarr"
    with ArrayWriter(path, shape=(D,), dtype="float32", num_samples=10) as w:
        w.append(feats(0, 4), index=np.arange(4))
        bad = da.from_array(feats(4, 10), chunks=(3, D)).map_blocks(fail, dtype=np.float32)
        with pytest.raises(RuntimeError, match="the model failed") as info:
            w.append(bad, index=np.arange(4, 10))
        assert info.value.__notes__ == [
            f"daskimg: ArrayWriter({str(path)!r}).append failed; a batch is added whole or "
            "not at all, and the writer holds 4 rows"
        ]
        w.append(feats(4, 10), index=np.arange(4, 10))
    np.testing.assert_array_equal(di.open_zarr(path).arrays["features"].compute(), feats(0, 10))


def test_a_column_written_into_a_consolidated_store_reads_right_in_plain_zarr(tmp_path):
    # zarr.consolidate_metadata (an xarray user's step) copies each array's zarr.json into
    # the root; ArrayWriter(mode="a") kept that copy, so plain zarr and xarray read the
    # replaced column with its old dtype (int32 bits as float32: 1.4e-45) and did not see a
    # new one, while verify passed
    path = tmp_path / "c.zarr"
    di.to_zarr(di.ImageSet(np.zeros((4, 2, 2, 3), np.uint8), np.arange(4) % 2), path, chunks=2)
    with ArrayWriter(path, name="pred", shape=(), dtype="float32", mode="a") as w:
        w.append(np.arange(4, dtype=np.float32), index=np.arange(4))
    with warnings.catch_warnings():  # zarr: "not part of the Zarr format 3 specification"
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(str(path))
    want = np.arange(4, dtype=np.int32) * 7
    with ArrayWriter(path, arrays={"pred": ((), "int32"), "more": ((), "int64")}, mode="a",
                     overwrite=True) as w:  # fmt: skip
        w.append(pred=want, more=want.astype(np.int64), index=np.arange(4))
    group = zarr.open_group(str(path), mode="r")  # the oracle: plain zarr, as xarray opens it
    np.testing.assert_array_equal(group["pred"][...], want)
    np.testing.assert_array_equal(group["more"][...], want)
    assert verify(path) == []


def test_a_writer_sent_to_another_process_says_what_to_do(tmp_path):
    # client.submit(f, writer, batch) failed with "cannot pickle '_thread.RLock' object",
    # naming neither the writer nor what to do; the writer goes on working here
    import pickle

    w = di.ArrayWriter(tmp_path / "f.zarr.zip", name="f", shape=(2,), dtype="int64")
    with pytest.raises(TypeError, match=r"ArrayWriter .* cannot be sent to another process"):
        pickle.dumps(w)
    w.append(np.ones((4, 2), np.int64))
    w.close()
    np.testing.assert_array_equal(np.asarray(di.open_zarr(tmp_path / "f.zarr.zip").arrays["f"]), 1)


def test_a_split_store_made_by_an_arraywriter_is_checked_against_the_splits_beside_it(tmp_path):
    # to_zarr refused a valid.zarr.zip numbering its classes otherwise than train.zarr.zip
    # beside it; an ArrayWriter making the same store did not
    train = di.ImageSet(np.zeros((3, 2, 2, 3), np.uint8), [0, 1, 2], classes=["bird", "cat", "dog"])
    di.to_zarr(train, tmp_path / "train.zarr.zip", split="train")
    kw = {"name": "labels", "shape": (), "dtype": "int64", "num_samples": 2, "split": "valid"}
    with pytest.raises(ValueError, match=r"label 0 is 'cat' in one and 'bird' in the other"):
        ArrayWriter(tmp_path / "valid.zarr.zip", classes=["cat", "dog"], **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.zarr.zip"]  # nothing begun
    with ArrayWriter(tmp_path / "valid.zarr.zip", classes=["bird", "cat", "dog"], **kw) as w:
        w.append(np.array([1, 2]), index=np.arange(2))
    g = plain_group(tmp_path / "valid.zarr.zip")
    assert [g.attrs["daskimg"]["classes"][k] for k in g["labels"][...]] == ["cat", "dog"]
