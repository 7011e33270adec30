"""ArrayWriter writes text arrays (``((), str)``, e.g. ``paths``) as Zarr v3 strings, the
way ``to_zarr`` stores ``paths``: read back by daskimg's checked reader and by plain zarr."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import plain_group

import daskimg as di
from daskimg.storeinfo import verify
from daskimg.writeback.writer import ArrayWriter

EXTS = [".zarr.zip", ".zarr"]

WORDS = ["", "a", "é/ü/ß.png", "日本語/画像 1.jpg", "x" * 300, "tab\there", "nul\0byte", "🙂"]


def names(a: int, b: int) -> list[str]:
    """Sample i's text: a mix of empty, long and non-ASCII strings."""
    return [f"{WORDS[i % len(WORDS)]}#{i}" if i % 5 else WORDS[i % len(WORDS)] for i in range(a, b)]


def codecs(path, name: str) -> list:
    """The codec chain (inside shards) of an array, from its zarr.json."""
    if str(path).endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read(f"{name}/zarr.json"))
    else:
        meta = json.loads((path / name / "zarr.json").read_text())
    chain = meta["codecs"]
    if chain[0]["name"] == "sharding_indexed":
        chain = chain[0]["configuration"]["codecs"]
    return [(c["name"], c.get("configuration")) for c in chain], meta["data_type"]


@pytest.mark.parametrize("ext", EXTS)
def test_paths_round_trip_in_arrival_order(tmp_path, ext):
    p = tmp_path / f"f{ext}"
    arrays = {"pred": ((2,), "float32"), "paths": ((), str), "note": ((), "str")}
    n, notes = 0, []
    with ArrayWriter(p, arrays=arrays, chunks=4, shard_chunks=2) as w:
        for size in [3, 9, 1, 0, 12, 5]:
            notes += names(n, n + size)[::-1]
            w.append(
                pred=np.full((size, 2), n, np.float32),
                paths=names(n, n + size),  # a list
                note=np.array(names(n, n + size)[::-1], dtype=str),  # a numpy str array
            )
            n += size
    ds = di.open_zarr(p)
    assert ds.paths.tolist() == names(0, n)  # paths: the ImageSet's paths
    assert ds.arrays["note"].compute().tolist() == notes  # other text columns: lazy
    g = plain_group(p)
    assert [str(x) for x in g["paths"][...]] == names(0, n)
    assert verify(p) == []
    # stored exactly as to_zarr stores paths: vlen-utf8, zstd, crc32c
    ref = tmp_path / f"ref{ext}"
    di.to_zarr(di.ImageSet(np.zeros((4, 2, 2, 1), np.uint8), paths=names(0, 4)), ref)
    assert codecs(p, "paths") == codecs(ref, "paths")
    assert codecs(p, "paths")[0][0] == ("vlen-utf8", {})


def test_text_in_arrival_order_survives_checkpoint_and_resume(tmp_path):
    p = tmp_path / "t.zarr.zip"
    spec = {"arrays": {"paths": ((), str)}, "chunks": 4, "shard_chunks": 2}
    w = ArrayWriter(p, **spec, checkpoint_every=None)
    w.append(paths=names(0, 3))
    w.checkpoint()  # the unfinished shard's rows go to its tail file
    w.append(paths=names(3, 6))
    w.checkpoint()  # ... appended to it (not rewritten)
    w.append(paths=names(6, 11))
    w.checkpoint()  # a new shard's tail
    w.append(paths=names(11, 13))  # lost: no checkpoint covers it
    del w
    with ArrayWriter(p, **spec, resume=True) as w:
        assert len(w) == 11
        w.append(paths=names(11, 20))
    assert di.open_zarr(p).paths.tolist() == names(0, 20)
    assert [str(x) for x in plain_group(p)["paths"][...]] == names(0, 20)


@pytest.mark.parametrize("ext", EXTS)
def test_text_placed_by_index_and_resumed(tmp_path, ext):
    p = tmp_path / f"s{ext}"
    n = 37
    di.to_zarr(di.ImageSet(np.zeros((n, 2, 2, 1), np.uint8)), p, chunks=8, shard_chunks=2)
    spec = {"name": "source", "shape": (), "dtype": str, "mode": "a", "checkpoint_every": None}
    perm = np.random.default_rng(0).permutation(n)
    parts = np.array_split(perm, 6)
    oracle = np.array(names(0, n), dtype=object)
    w = ArrayWriter(p, **spec)
    for b in parts[:3]:
        w.append(list(oracle[b]), index=b)
    w.checkpoint()
    w.append(["lost"] * len(parts[3]), index=parts[3])
    del w
    with ArrayWriter(p, **spec, resume=True) as w:
        assert len(w) == sum(len(b) for b in parts[:3])
        for b in parts[3:]:
            w.append(oracle[b].astype(str), index=b)
    ds = di.open_zarr(p)
    assert ds.arrays["source"].compute().tolist() == oracle.tolist()
    assert [str(x) for x in plain_group(p)["source"][...]] == oracle.tolist()
    assert verify(p) == []


def test_bad_text_is_refused_and_the_writer_stays_usable(tmp_path):
    p = tmp_path / "b.zarr"
    with ArrayWriter(p, arrays={"paths": ((), str), "x": ((), "int64")}) as w:
        bad = [
            ([b"a.png", b"b.png"], TypeError, r"row 0 is bytes b'a.png'.*decode bytes first"),
            (np.array([b"a", b"b"]), TypeError, r"got bytes \(\|S1\); decode them first"),
            (["a", None], TypeError, "row 1 is NoneType None, not a str"),
            ([1, 2], TypeError, "row 0 is int 1, not a str"),
            (np.arange(2), TypeError, "expected a batch of str, got int64"),
            (["ok", "bad\udcff"], ValueError, r"row 1 .* cannot be stored as UTF-8"),
            ("ab", ValueError, "got one string; use"),
            (np.array([["a"], ["b"]]), ValueError, r"shape \(n,\) of str, got shape \(2, 1\)"),
        ]
        for value, err, msg in bad:
            with pytest.raises(err, match=msg):
                w.append(paths=value, x=np.arange(2))
            assert len(w) == 0
        w.append(paths=("a.png", "b.png"), x=np.arange(2))
    assert di.open_zarr(p).paths.tolist() == ["a.png", "b.png"]


def test_repetitive_text_reads_back(tmp_path):
    p = tmp_path / "r.zarr"
    with ArrayWriter(p, arrays={"split": ((), str)}) as w:
        w.append(split=["train/" + "x" * 100] * 5000)
    assert plain_group(p)["split"][0] == "train/" + "x" * 100  # zarr reads it
    assert di.open_zarr(p).arrays["split"].compute().tolist() == ["train/" + "x" * 100] * 5000


@pytest.mark.parametrize("shuffle", [False, True])
def test_written_text_is_fed_with_its_samples(tmp_path, shuffle):
    # a text array other than paths crashed the feed ('NoneType' has no attribute 'nbytes')
    torch = pytest.importorskip("torch")
    from daskimg.torch import TorchDataset

    p = tmp_path / "s.zarr.zip"
    di.testing.make_image_folder(tmp_path / "src", n=20)
    di.to_zarr(di.from_folder(tmp_path / "src", size=(8, 8)), p, chunks=8)
    ds = di.open_zarr(p)
    n = len(ds)
    with ArrayWriter(p, name="note", shape=(), dtype=str, mode="a") as w:
        w.append(names(0, n), index=range(n))
    paths = list(ds.paths)
    seen = []
    for note, pp, index in di.BatchIterator(
        p, batch_size=4, shuffle=shuffle, arrays=("note", "paths", "index")
    ):
        assert list(note) == [names(0, n)[i] for i in index]
        assert list(pp) == [paths[i] for i in index]
        seen += list(index)
    assert sorted(seen) == list(range(n))
    loader = torch.utils.data.DataLoader(
        TorchDataset(p, batch_size=4, shuffle=shuffle, arrays=("note", "index")), batch_size=None
    )
    for note, index in loader:
        assert list(note) == [names(0, n)[i] for i in index.tolist()]


def test_text_longer_than_a_reader_takes_is_refused_as_to_zarr_refuses_it(tmp_path):
    # written, it read back as a damaged chunk; to_zarr refused it, the writer did not
    path = tmp_path / "t.zarr.zip"
    with ArrayWriter(path, name="note", shape=(), dtype=str) as w:
        with pytest.raises(ValueError, match=r"'note', row 1: a text value of 70,000 bytes"):
            w.append(["a", "x" * 70_000])
        w.append(["a", "x" * 60_000])  # the batch refused changed nothing
    assert [len(v) for v in plain_group(path)["note"][:]] == [1, 60_000]
