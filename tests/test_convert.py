from __future__ import annotations

import itertools
import os
import re
import zipfile

import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given
from hypothesis import strategies as st

import daskimg as di
from daskimg.cli import main
from daskimg.errors import DaskImgError
from daskimg.read.arrays import open_array_set, slabs, spans
from daskimg.store.convert import convert
from daskimg.storeinfo import info, verify

h5py = pytest.importorskip("h5py")


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (37, 6, 5, 3), dtype=np.uint8), rng.integers(0, 4, 37)


def _save_images(path, kind, x):
    """``x`` saved as the images of a ``kind`` ("npy", "npz", "h5") file at ``path``."""
    if kind == "npy":
        np.save(path, x)
    elif kind == "npz":
        np.savez(path, images=x)
    else:
        with h5py.File(path, "w") as f:
            f.create_dataset("images", data=x)


def _stored(path):
    g = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
    return {name: g[name][...] for name, _ in g.arrays()}, g.attrs["daskimg"]


def test_convert_hdf5_shuffled_matches_source(tmp_path, arrays):
    x, y = arrays
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.create_dataset("images", data=x, chunks=(4, 6, 5, 3), compression="lzf")
        f.create_dataset("labels", data=y)
    out = tmp_path / "train.zarr.zip"
    convert(
        tmp_path / "old.h5", out, labels="labels", classes=["a", "b", "c", "d"], chunks=8, seed=3
    )
    got, attrs = _stored(out)
    # a seeded permutation of the source, rows kept whole and labels aligned
    perm = np.random.default_rng(3).permutation(37)
    np.testing.assert_array_equal(got["images"], x[perm])
    np.testing.assert_array_equal(got["labels"], y[perm])
    assert attrs["order"] == "shuffled"
    assert attrs["classes"] == ["a", "b", "c", "d"]
    # each sample's row in the source, kept: no paths tell an array file's rows apart
    np.testing.assert_array_equal(got["source_row"], perm)
    np.testing.assert_array_equal(got["images"], x[got["source_row"]])
    with h5py.File(tmp_path / "old.h5", "a") as f:
        f.create_dataset("source_row", data=np.zeros(37, np.int64))
    with pytest.raises(ValueError, match="a column named 'source_row' is asked for"):
        convert(tmp_path / "old.h5", tmp_path / "x.zarr.zip", columns=["source_row"])


def test_convert_npy_memmap_and_string_labels(tmp_path, arrays):
    x, y = arrays
    np.save(tmp_path / "x.npy", x[..., 0])  # (N, H, W) grayscale gets a channel axis
    np.save(tmp_path / "y.npy", np.array(["cat", "dog"])[y % 2])
    ds = open_array_set(tmp_path / "x.npy", labels=str(tmp_path / "y.npy"))
    assert ds.images.shape == (37, 6, 5, 1)
    assert ds.classes == ("cat", "dog")
    di.to_zarr(ds, tmp_path / "g.zarr.zip", order="source")
    got, _ = _stored(tmp_path / "g.zarr.zip")
    np.testing.assert_array_equal(got["images"][..., 0], x[..., 0])
    np.testing.assert_array_equal(got["labels"], y % 2)


def test_convert_npz_via_cli(tmp_path, arrays):
    x, y = arrays
    np.savez(tmp_path / "d.npz", pics=x, target=y)
    out = tmp_path / "t.zarr.zip"
    assert (
        main(
            [
                "convert",
                str(tmp_path / "d.npz"),
                str(out),
                "--images",
                "pics",
                "--labels",
                "target",
                "--order",
                "source",
            ]
        )
        == 0
    )
    got, _ = _stored(out)
    np.testing.assert_array_equal(got["images"], x)
    np.testing.assert_array_equal(got["labels"], y)


def test_convert_errors_name_what_is_missing(tmp_path, arrays, capsys):
    x, _ = arrays
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.create_dataset("data", data=x)
    assert main(["convert", str(tmp_path / "old.h5"), str(tmp_path / "o.zarr.zip")]) == 2
    err = capsys.readouterr().err
    assert "no dataset 'images'" in err and "data" in err
    assert len(open_array_set(tmp_path / "old.h5", images="data")) == len(x)
    (tmp_path / "x.bin").write_bytes(b"?")
    with pytest.raises(ValueError, match=r"\.h5/\.hdf5, \.npy or \.npz"):
        open_array_set(tmp_path / "x.bin")
    # a structured dtype: the message, not numpy's TypeError from deep inside
    np.save(tmp_path / "rec.npy", np.zeros((4, 3, 3), dtype=[("v", "u1")]))
    assert main(["convert", str(tmp_path / "rec.npy"), str(tmp_path / "r.zarr.zip")]) == 2
    assert "images of dtype [('v', 'u1')] cannot be stored" in capsys.readouterr().err


# --- storeinfo: info and verify (the store bookkeeping) ------------------------


def _small_store(tmp_path, arrays, name="s.zarr.zip"):
    x, y = arrays
    ds = di.ImageSet(x, y, classes=list("abcd"), paths=[f"img {i}.png" for i in range(len(x))])
    return di.to_zarr(ds, tmp_path / name, chunks=8, codec="none")


def test_verify_and_info_report_a_truncated_zip(tmp_path, arrays, capsys):
    path = _small_store(tmp_path, arrays)
    with open(path, "rb") as fh:
        data = fh.read()
    cut = tmp_path / "cut.zarr.zip"
    cut.write_bytes(data[: len(data) // 2])  # an interrupted copy: no central directory
    problems = verify(cut)
    assert len(problems) == 1 and problems[0].array == "(store)"
    assert "not a readable zip" in problems[0].message and "copy it again" in problems[0].message
    with pytest.raises(DaskImgError, match=r"cut\.zarr\.zip.*not a readable zip.*copy it again"):
        info(cut)
    assert main(["verify", str(cut)]) == 1
    assert "not a readable zip" in capsys.readouterr().out
    assert main(["info", str(cut)]) == 2
    assert "cut.zarr.zip" in capsys.readouterr().err


def test_info_ratio_and_counts_against_plain_zarr(tmp_path, arrays):
    _, y = arrays
    path = _small_store(tmp_path, arrays)
    summary = info(path)
    g = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
    with zipfile.ZipFile(path) as zf:
        stored = sum(i.file_size for i in zf.infolist() if i.filename.startswith("images/"))
    assert summary["arrays"]["images"]["stored_bytes"] == stored
    assert summary["arrays"]["images"]["ratio"] == pytest.approx(g["images"][...].nbytes / stored)
    # strings have no fixed size per sample: no compression ratio to report
    assert summary["arrays"]["paths"]["ratio"] is None
    assert summary["class_counts"] == {c: int((y == i).sum()) for i, c in enumerate("abcd")}


@pytest.mark.parametrize("dtype", ["float64", "float32", "bool"])
def test_convert_whole_number_labels_of_any_numeric_dtype(tmp_path, arrays, dtype):
    # MATLAB and many HDF5 exports store class indices as doubles
    x, y = arrays
    y = y % 2 if dtype == "bool" else y
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("images", data=x)
        f.create_dataset("labels", data=y.astype(dtype))
    ds = open_array_set(tmp_path / "m.h5", labels="labels")
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, y)


def test_convert_refuses_fractional_labels_saying_what_to_do(tmp_path, arrays):
    x, _ = arrays
    np.savez(tmp_path / "r.npz", images=x, labels=np.linspace(0, 1, len(x)))
    with pytest.raises(
        ValueError, match=r"'labels' must be whole numbers \(class indices\).*0\.027.*columns="
    ):
        open_array_set(tmp_path / "r.npz", labels="labels")


def test_labels_of_several_values_a_sample_are_refused_naming_their_shape(tmp_path, arrays):
    # the shape said was the reshaped one, (8, 126) for an (8, 6, 7, 3) dataset: not what
    # h5ls shows
    x, y = arrays
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f.create_dataset("images", data=x)
        f.create_dataset("onehot", data=np.eye(4)[y % 4])
    with h5py.File(tmp_path / "m.h5", "r") as f:
        shapes = {k: f[k].shape for k in f}  # the oracle: h5py's own shapes
    for name in ("images", "onehot"):
        said = re.escape(
            f"labels {name!r} must be one per sample (shape (N,) or (N, 1)), got shape {shapes[name]}"
        )
        with pytest.raises(ValueError, match=said):
            open_array_set(tmp_path / "m.h5", labels=name)


@pytest.mark.parametrize(
    "bad", [np.array(2**64 - 1, np.uint64), np.array(1e20), np.array(-1e20), np.array(2.0**63)]
)
def test_labels_beyond_int64_are_refused_not_wrapped(tmp_path, arrays, bad):
    # uint64 2**64-1 was stored as -1 ("no label", even with classes given), 1e20 as -2**63
    x, y = arrays
    labels = y.astype(bad.dtype)
    labels[5] = bad
    np.savez(tmp_path / "w.npz", images=x, labels=labels)
    with pytest.raises(
        ValueError, match=r"'labels' must be class indices; found .*beyond the int64"
    ):
        open_array_set(tmp_path / "w.npz", labels="labels", classes=list("abcd"))
    with pytest.raises(ValueError, match=r"labels must be class indices; found .*beyond the int64"):
        di.ImageSet(x, labels, classes=list("abcd"))
    # the largest that fits is kept exactly (numpy's int64 is the oracle)
    fine = y.astype(np.uint64)
    np.testing.assert_array_equal(di.ImageSet(x, fine, classes=list("abcd")).labels, y)


# --- reading rows of HDF5 in any order: contiguous slices, slabs when chunks are shared ----


@pytest.mark.parametrize(
    ("layout", "slabbed"),
    [
        ({"compression": "lzf", "chunks": (5, 3, 5, 3)}, True),  # chunks shared by rows
        ({"compression": "lzf", "chunks": (1, 6, 5, 3)}, False),  # one row per chunk
        ({}, False),  # contiguous
    ],
)
def test_array_source_reads_any_order_without_fancy_indexing(tmp_path, arrays, layout, slabbed):
    x, _ = arrays
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("images", data=x, **layout)
        f.create_dataset("gray", data=x[..., 0], **({} if not layout else {"chunks": True}))
    ds = open_array_set(tmp_path / "a.h5")
    shuffled = np.random.default_rng(1).permutation(37)
    for order in (shuffled, np.arange(37)[::-1], np.array([3, 3, 0])):
        got = ds.take(order).row_source.to_dask(block=8)
        if order is shuffled:  # the scattered order reads slabs when chunks are shared
            assert any("slab" in k for k in got.dask.layers) == slabbed
        np.testing.assert_array_equal(got.compute(), x[order])
    gray = open_array_set(tmp_path / "a.h5", images="gray").take(np.arange(37)[::-1])
    np.testing.assert_array_equal(gray.images.compute()[..., 0], x[::-1, ..., 0])


def test_shuffled_rows_of_shared_chunks_read_each_chunk_once(tmp_path, arrays, monkeypatch):
    import daskimg.read.arrays as arrays_module

    x, _ = arrays
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("images", data=x, chunks=(10, 6, 5, 3), compression="lzf")
    reads: list[tuple[int, int]] = []
    original = arrays_module._read_slab

    def spy(path, key, a, b, shape, stamp=None):
        reads.append((a, b))
        return original(path, key, a, b, shape, stamp)

    monkeypatch.setattr(arrays_module, "_read_slab", spy)
    perm = np.random.default_rng(0).permutation(37)
    ds = open_array_set(tmp_path / "a.h5").take(perm)
    np.testing.assert_array_equal(ds.row_source.to_dask(block=8).compute(), x[perm])
    covered = sorted(reads)
    # each chunk of 10 rows read exactly once, in contiguous slabs
    assert covered[0][0] == 0 and covered[-1][1] >= 37
    assert all(a % 10 == 0 for a, _ in covered)
    assert all(b1 == a2 for (_, b1), (a2, _) in itertools.pairwise(covered))


@given(
    rows=st.lists(st.integers(0, 300), min_size=0, max_size=80),
    chunk_rows=st.integers(1, 40),
)
def test_spans_cover_the_rows_and_join_only_chunk_mates(rows, chunk_rows):
    got = spans(np.array(rows, dtype=np.int64), chunk_rows)
    wanted = sorted(set(rows))
    assert sorted({r for r in wanted for a, b in got if a <= r < b}) == wanted
    assert all(a < b for a, b in got)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(got))  # disjoint
    for a, b in got:
        inside = [r for r in wanted if a <= r < b]
        assert inside[0] == a and inside[-1] == b - 1  # no slice reaches past its rows
        for r, s in itertools.pairwise(inside):
            assert s == r + 1 or s // chunk_rows == r // chunk_rows


@given(
    rows=st.lists(st.integers(0, 300), min_size=1, max_size=80),
    chunk_rows=st.integers(1, 40),
    target=st.integers(1, 100),
)
def test_slabs_are_chunk_aligned_and_cover_every_row_once(rows, chunk_rows, target):
    got = slabs(np.array(rows, dtype=np.int64), chunk_rows, target)
    assert all(a % chunk_rows == 0 and b % chunk_rows == 0 and a < b for a, b in got)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(got))
    for r in rows:
        assert sum(a <= r < b for a, b in got) == 1
    assert all(b - a <= max(target, chunk_rows) for a, b in got)


def test_convert_carries_columns_and_boxes(tmp_path, arrays):
    x, _ = arrays
    boxes = np.tile(np.array([[1, 1, 4, 5]], np.float32), (37, 1))
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.create_dataset("images", data=x)
        f.create_dataset("bbox", data=boxes)
        f.create_dataset("weight", data=np.linspace(0, 1, 37))
    ds = open_array_set(tmp_path / "b.h5", columns=["weight"], boxes=["bbox"])
    assert ds.boxes == ("bbox",)
    np.testing.assert_array_equal(ds.columns["bbox"], boxes)
    np.testing.assert_array_equal(ds.take([2, 0]).columns["weight"], [1 / 18, 0])
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        open_array_set(tmp_path / "b.h5", columns=["nope"])
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"columns and boxes come from \.h5 or \.npz"):
        open_array_set(tmp_path / "x.npy", boxes=["bbox"])


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"images": "grp"}, ValueError, r"'grp' is an HDF5 group \(holding \['x'\]\).*grp/x"),
        ({"images": "one"}, ValueError, r"dataset 'one' holds a single value \(shape \(\)\)"),
        ({"labels": "one"}, ValueError, r"dataset 'one' holds a single value"),
        ({"labels": "grp"}, ValueError, r"'grp' is an HDF5 group"),
        ({"columns": ["grp"]}, ValueError, r"'grp' is an HDF5 group"),
        ({"columns": ["one"]}, ValueError, r"dataset 'one' holds a single value"),
        ({"boxes": ["empty"]}, ValueError, r"'empty' is an HDF5 group \(holding \[\]\).*nothing"),
        ({"labels": "dt"}, ValueError, r"'dt' is an HDF5 datatype, not a dataset"),
        ({"images": "dangling"}, KeyError, r"'dangling' is a link to nothing that can be opened"),
        ({"labels": "nothing"}, ValueError, r"dataset 'nothing' is empty"),
    ],
)
def test_convert_names_an_hdf5_name_that_is_not_a_dataset(tmp_path, arrays, kw, error, match):
    # a group was an AttributeError or a bare TypeError from h5py ("Accessing a group is
    # done with bytes or str"), a single value an IndexError or "len() of unsized object",
    # a dangling link h5py's "component not found" without the file
    x, _ = arrays
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("images", data=x)
        f.create_dataset("one", data=3)
        f.create_dataset("grp/x", data=np.zeros(len(x)))
        f.create_group("empty")
        f["dt"] = np.dtype("int32")  # a named datatype
        f["dangling"] = h5py.SoftLink("/not/there")
        f.create_dataset("nothing", data=h5py.Empty("f4"))
    with pytest.raises(error, match=r"g\.h5'?: " + match):
        open_array_set(tmp_path / "g.h5", **kw)
    args = ["convert", str(tmp_path / "g.h5"), str(tmp_path / "o.zarr.zip")]
    if "images" in kw:
        assert main([*args, "--images", kw["images"]]) == 2
    assert not (tmp_path / "o.zarr.zip").exists()


def test_npz_labels_that_are_one_value_are_refused(tmp_path, arrays):
    x, _ = arrays
    np.savez(tmp_path / "s.npz", images=x, lab=np.int64(3))
    with pytest.raises(ValueError, match=r"labels 'lab' hold a single value \(3\)"):
        open_array_set(tmp_path / "s.npz", labels="lab")


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ((np.ones((3, 2, 2, 1)) * 1j).astype(np.complex64), "images of dtype complex64 cannot"),
        (np.zeros((0, 4, 4, 3), np.uint8), r"holds no images \(shape \(0, 4, 4, 3\)\)"),
        (np.zeros((3, 4, 0, 3), np.uint8), r"every image is empty \(shape \(3, 4, 0, 3\)\)"),
    ],
)
def test_convert_refuses_arrays_it_cannot_store_naming_the_file(tmp_path, values, match):
    # complex and zero-width images blamed "<ZipBuilder object at 0x..>: metadata is
    # damaged"; an empty array was a bare dask error
    np.save(tmp_path / "a.npy", values)
    with pytest.raises(ValueError, match=r"a\.npy'?: " + match):
        convert(str(tmp_path / "a.npy"), str(tmp_path / "a.zarr.zip"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]
    with pytest.raises(ValueError, match="complex128: a store holds integers"):
        di.to_zarr(
            di.ImageSet(np.zeros((3, 2, 2, 1), np.uint8), columns={"c": np.ones(3) * 1j}),
            tmp_path / "c.zarr.zip",
        )


@pytest.mark.parametrize("kind", ["npy", "npz", "h5", "ImageSet"])
@pytest.mark.parametrize(
    "shape", [(6, 3, 8, 9), (6, 1, 28, 28), (6, 4, 5, 7), (6, 2, 16, 16), (6, 1, 4, 6, 6)]
)
def test_channels_first_images_are_refused_naming_the_file(tmp_path, kind, shape):
    # they were stored as C rows of H pixels with W channels, and every reader got those
    x = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    match = rf"look channels-first \(N, C(, D)?, H, W\) with C={shape[1]}.*np\.moveaxis\(images, 1, -1\)"
    out = tmp_path / "o.zarr.zip"
    if kind == "ImageSet":
        for images in (x, da.from_array(x)):
            with pytest.raises(ValueError, match=match):
                di.to_zarr(di.ImageSet(images), out)
            assert not out.exists()
        di.to_zarr(di.ImageSet(x), out, order="source", check_layout=False)
        np.testing.assert_array_equal(_stored(out)[0]["images"], x)
        return
    src = tmp_path / f"x.{kind}"
    _save_images(src, kind, x)
    with pytest.raises(ValueError, match=rf"x\.{kind}'.*" + match):
        convert(str(src), str(out))
    assert not out.exists()
    # moved last, as the message says, it is stored as the images they are
    ds = di.ImageSet(np.moveaxis(x, 1, -1))
    di.to_zarr(ds, out, order="source")
    stored, _ = _stored(out)
    np.testing.assert_array_equal(stored["images"], np.moveaxis(x, 1, -1))
    # told the layout is right, it is stored as given
    as_is = tmp_path / "as-is.zarr.zip"
    if kind == "npy":
        args = ["convert", str(src), str(as_is), "--order", "source", "--no-layout-check"]
        assert main(args) == 0
    else:
        convert(str(src), str(as_is), order="source", check_layout=False)
    np.testing.assert_array_equal(_stored(as_is)[0]["images"], x)


def test_a_store_that_holds_channels_first_arrays_still_opens(tmp_path, monkeypatch):
    # refused when written now; a store written before must still open and read as stored
    import daskimg.store.write as write_mod

    x = np.random.default_rng(3).integers(0, 256, (5, 3, 8, 9), dtype=np.uint8)
    monkeypatch.setattr(write_mod, "channels_first", lambda shape: None)  # an older daskimg
    out = di.to_zarr(di.ImageSet(x), tmp_path / "old.zarr.zip", order="source")
    monkeypatch.undo()
    ds = di.open_zarr(out)
    np.testing.assert_array_equal(np.asarray(ds.images), _stored(out)[0]["images"])
    np.testing.assert_array_equal(np.asarray(ds.images), x)


@pytest.mark.parametrize("shape", [(6, 3, 8, 3), (6, 8, 9, 3), (6, 1, 8, 4), (6, 8, 9, 7)])
def test_channels_last_images_are_not_taken_for_channels_first(tmp_path, shape):
    x = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    convert(str(tmp_path / "x.npy"), str(tmp_path / "o.zarr.zip"), order="source")
    np.testing.assert_array_equal(_stored(tmp_path / "o.zarr.zip")[0]["images"], x)


def test_hdf5_enum_labels_keep_their_names_as_classes(tmp_path):
    # labels stored as an HDF5 enum (MATLAB, pandas exports) lost their names: classes ()
    import h5py

    from daskimg.store.convert import convert

    src = tmp_path / "data.h5"
    names = {"RED": 0, "GREEN": 1, "BLUE": 2}
    with h5py.File(src, "w") as f:
        f["images"] = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
        f.create_dataset("labels", data=np.array([0, 1, 2, 0, 1, 2], "i1"),
                         dtype=h5py.enum_dtype(names, basetype="i1"))  # fmt: skip
    out = di.open_zarr(convert(src, tmp_path / "out.zarr.zip", labels="labels", order="source"))
    assert out.classes == ("RED", "GREEN", "BLUE")
    with h5py.File(src, "r") as f:  # oracle: h5py's own enum mapping
        mapping = {v: k for k, v in h5py.check_enum_dtype(f["labels"].dtype).items()}
        np.testing.assert_array_equal([out.classes[i] for i in out.labels],
                                      [mapping[v] for v in f["labels"][...]])  # fmt: skip


def test_hdf5_values_never_written_are_refused_not_stored_as_the_fill_value(tmp_path, arrays):
    # HDF5 reads what was never written as its fill value (0), and convert stored it: a
    # preallocated file whose writer stopped, a virtual dataset without a source file, an
    # external raw file cut short all became black images with their labels
    x, y = arrays
    x = x | 1  # no zero pixel: a zero image can only be the fill value
    with pytest.MonkeyPatch.context() as m:
        m.chdir(tmp_path)
        with h5py.File("partial.h5", "w") as f:
            d = f.create_dataset("images", shape=x.shape, dtype="u1", chunks=(4, 6, 5, 3))
            d[:20] = x[:20]
            f["labels"] = y
            assert d.id.get_num_chunks() == 5  # the oracle: HDF5's own count (of 10)
        with pytest.raises(ValueError, match=r"'images' was written in part: rows 20\.\.36 "):
            convert("partial.h5", "a.zarr.zip", labels="labels")
        with h5py.File("labels.h5", "w") as f:
            f["images"] = x
            d = f.create_dataset("labels", shape=y.shape, dtype="i8", chunks=(10,))
            d[:10] = y[:10]
        with pytest.raises(ValueError, match=r"'labels' was written in part: rows 10\.\.36 "):
            convert("labels.h5", "b.zarr.zip", labels="labels")
        with h5py.File("never.h5", "w") as f:
            f.create_dataset("images", shape=x.shape, dtype="u1")
        with pytest.raises(ValueError, match=r"'images' was never written"):
            convert("never.h5", "c.zarr.zip")
        layout = h5py.VirtualLayout(shape=x.shape, dtype="u1")
        for k, (a, b) in enumerate([(0, 20), (20, 37)]):
            with h5py.File(f"part{k}.h5", "w") as f:
                f["d"] = x[a:b]
            layout[a:b] = h5py.VirtualSource(f"part{k}.h5", "d", shape=x[a:b].shape)
        with h5py.File("vds.h5", "w") as f:
            f.create_virtual_dataset("images", layout)
        np.testing.assert_array_equal(
            _stored(convert("vds.h5", "d.zarr.zip", order="source"))[0]["images"], x
        )
        (tmp_path / "part1.h5").unlink()
        with pytest.raises(ValueError, match=r"virtual dataset, and its source file 'part1.h5'"):
            convert("vds.h5", "e.zarr.zip")
        x.tofile("raw.bin")
        with h5py.File("ext.h5", "w") as f:
            f.create_dataset(
                "images", shape=x.shape, dtype="u1", external=[("raw.bin", 0, h5py.h5f.UNLIMITED)]
            )
        np.testing.assert_array_equal(
            _stored(convert("ext.h5", "f.zarr.zip", order="source"))[0]["images"], x
        )
        with open("raw.bin", "r+b") as f:
            f.truncate(x.nbytes - 1)
        with pytest.raises(ValueError, match=rf"holds {x.nbytes - 1} bytes, not the {x.nbytes}"):
            convert("ext.h5", "g.zarr.zip")
        assert sorted(p.name for p in tmp_path.glob("*.zarr.zip")) == ["d.zarr.zip", "f.zarr.zip"]


def test_array_files_that_cannot_be_read_are_named_with_what_to_do(tmp_path):
    # a traceback (IndexError, AttributeError), or h5py's and zarr's words without the file
    x = np.arange(40 * 16 * 16 * 3, dtype=np.uint32).astype(np.uint8).reshape(40, 16, 16, 3)
    np.save(tmp_path / "scalar.npy", np.uint8(3))
    with open(tmp_path / "zipped.npy", "wb") as f:
        np.savez(f, images=x)
    np.save(tmp_path / "long.npy", np.ones((4, 8, 8, 1), np.longdouble))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "npy.h5").write_bytes((tmp_path / "x.npy").read_bytes())
    with h5py.File(tmp_path / "ok.h5", "w") as f:
        f.create_dataset("images", data=x, chunks=(4, 16, 16, 3), compression="gzip")
        offset = f["images"].id.get_chunk_info(3).byte_offset  # the oracle: chunk 3, rows 12..15
    whole = (tmp_path / "ok.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(whole[: len(whole) * 2 // 3])
    damaged = bytearray(whole)
    damaged[offset + 20] ^= 0xFF
    (tmp_path / "damaged.h5").write_bytes(bytes(damaged))
    said = {
        "scalar.npy": r"'.*scalar.npy' holds a single value",
        "zipped.npy": r"'.*zipped.npy' is an .npz archive .* rename it to .npz",
        "long.npy": r"'.*long.npy': the images are float128 \(long double\)",
        "npy.h5": r"cannot open '.*npy.h5' as HDF5: .*not an HDF5 file",
        "cut.h5": r"cannot open '.*cut.h5' as HDF5: .*truncated",
        "damaged.h5": r"'.*damaged.h5': dataset 'images', rows 12\.\.15: .*damaged there",
    }
    for name, message in said.items():
        with pytest.raises(ValueError, match=message):
            convert(tmp_path / name, tmp_path / f"{name}.zarr.zip")
        assert not (tmp_path / f"{name}.zarr.zip").exists()
    with pytest.raises(ValueError, match=r"array 'images' is float128 \(long double\)"):
        di.to_zarr(di.ImageSet(np.ones((2, 4, 4, 1), np.longdouble)), tmp_path / "l.zarr.zip")


def test_labels_that_are_numbers_as_text_are_said_to_be_numbered_in_text_order(tmp_path, caplog):
    # label "2" became index 4 (after "10", "11") without a word; from_folder says so
    import logging

    y = np.array([str(d).encode() for d in range(12)])
    with h5py.File(tmp_path / "digits.h5", "w") as f:
        f["images"] = np.zeros((12, 4, 4, 1), np.uint8)
        f["labels"] = y
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = open_array_set(tmp_path / "digits.h5", labels="labels")
    assert ds.classes[ds.labels[2]] == "2"  # the mapping itself is right: names by index
    assert "numbered in text order" in caplog.text and "'2' -> 4" in caplog.text
    by_value = [str(d) for d in range(12)]
    ds = open_array_set(tmp_path / "digits.h5", labels="labels", classes=by_value)
    np.testing.assert_array_equal(ds.labels, [int(v) for v in y])  # the oracle: int()


@pytest.mark.parametrize("kind", ["npy", "npz", "h5"])
def test_one_image_saved_without_its_sample_axis_is_named(tmp_path, kind, caplog):
    # an (H, W, 3) image was stored as H gray "images" 3 pixels wide, without a word
    import logging

    one = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    path = tmp_path / f"one.{kind}"
    _save_images(path, kind, one)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = open_array_set(path)
    assert ds.images.shape == (64, 48, 3, 1)  # as (N, H, W) gray images: what was asked
    assert "is read as 64 gray images of 48x3 pixels" in caplog.text
    assert "add the sample axis first" in caplog.text
    caplog.clear()
    gray = np.zeros((5, 28, 28), np.uint8)  # MNIST-like: gray images, no warning
    np.save(tmp_path / "gray.npy", gray)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert open_array_set(tmp_path / "gray.npy").images.shape == (5, 28, 28, 1)
    assert "gray images" not in caplog.text


def test_array_sources_name_what_is_wrong_with_their_labels(tmp_path):
    # labels of a .npy in an .npz: "got shape (1,)" for 6 labels; HDF5 labels not UTF-8: a
    # bare UnicodeDecodeError; images= on a .npy: ignored, the one array read
    np.save(tmp_path / "x.npy", np.zeros((6, 8, 8), np.uint8))
    np.savez(tmp_path / "y.npz", y=np.arange(6))
    with pytest.raises(ValueError, match=r"x\.npy.*the labels .*y\.npz.* are an \.npz archive"):
        open_array_set(tmp_path / "x.npy", labels=str(tmp_path / "y.npz"))
    with pytest.raises(ValueError, match=r"x\.npy.*images='nope' names an array in \.h5"):
        open_array_set(tmp_path / "x.npy", images="nope")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("images", data=np.zeros((4, 8, 8), np.uint8))
        f.create_dataset("labels", data=np.array(["café".encode("latin-1"), b"tea", b"tea", b"t"]))
    with pytest.raises(ValueError, match=r"d\.h5.*labels 'labels', row 0: .* is not UTF-8"):
        open_array_set(tmp_path / "d.h5", labels="labels")


def test_a_virtual_dataset_with_gaps_is_refused_not_stored_as_zeros(tmp_path):
    """HDF5 reads the rows of a virtual dataset that no source maps, or that map to source
    chunks never written, as the fill value: convert stored them as black images. The
    oracle: h5py's own reading, rows of 200s where a source holds them, zeros elsewhere."""
    x = np.full((20, 8, 8, 3), 200, np.uint8)
    with h5py.File(tmp_path / "part.h5", "w") as f:
        f["d"] = x[:10]
    with h5py.File(tmp_path / "half.h5", "w") as f:
        d = f.create_dataset("d", shape=(10, 8, 8, 3), chunks=(5, 8, 8, 3), dtype="u1")
        d[:5] = x[:5]

    def vds(name, shape, *maps):
        lay = h5py.VirtualLayout(shape=shape, dtype=np.uint8)
        for where, src in maps:
            lay[where] = src
        with h5py.File(tmp_path / name, "w") as f:
            f.create_virtual_dataset("images", lay, fillvalue=0)
        with h5py.File(tmp_path / name, "r") as f:
            return f["images"][...]

    part = h5py.VirtualSource(str(tmp_path / "part.h5"), "d", shape=(10, 8, 8, 3))
    half = h5py.VirtualSource(str(tmp_path / "half.h5"), "d", shape=(10, 8, 8, 3))
    refused = {
        "tail.h5": (vds("tail.h5", x.shape, (slice(0, 10), part)), "rows 10..19"),
        "every_other.h5": (vds("every_other.h5", x.shape, (slice(0, None, 2), part)), "unmapped"),
        "unwritten.h5": (vds("unwritten.h5", (10, 8, 8, 3), (slice(None), half)), "rows 5..9"),
    }
    for name, (read, says) in refused.items():
        assert not read.reshape(len(read), -1).any(axis=1).all()  # the oracle: zero rows
        with pytest.raises(ValueError, match=says):
            convert(str(tmp_path / name), str(tmp_path / f"{name}.zarr.zip"), order="source")
    # sound layouts are read: two sources end to end, interleaved, the written part alone
    other = h5py.VirtualSource(str(tmp_path / "part.h5"), "d", shape=(10, 8, 8, 3))
    for name, read in (
        ("joined.h5", vds("joined.h5", x.shape, (slice(0, 10), part), (slice(10, 20), other))),
        ("woven.h5", vds("woven.h5", x.shape, (slice(0, None, 2), part), (slice(1, None, 2), other))),
        ("written_part.h5", vds("written_part.h5", (5, 8, 8, 3), (slice(None), half[:5]))),
    ):  # fmt: skip
        out = convert(str(tmp_path / name), str(tmp_path / f"{name}.zarr.zip"), order="source")
        np.testing.assert_array_equal(di.open_zarr(out).images.compute(), read)
    # ... and so are (each refused or failing in this check's first version): the written
    # rows of a source picked with a stride, an unlimited mapping (a detector writer's),
    # and many mappings of one dataset in the same file
    with h5py.File(tmp_path / "even.h5", "w") as f:
        d = f.create_dataset("d", shape=(20, 8, 8, 3), dtype="u1", chunks=(1, 8, 8, 3))
        d[0::2] = np.arange(10, dtype=np.uint8)[:, None, None, None]
    even = h5py.VirtualSource(str(tmp_path / "even.h5"), "d", shape=(20, 8, 8, 3))
    with h5py.File(tmp_path / "grow.h5", "w") as f:
        f.create_dataset("d", data=x[:12], maxshape=(None, 8, 8, 3), chunks=(4, 8, 8, 3))
    lay = h5py.VirtualLayout(shape=(12, 8, 8, 3), dtype=np.uint8, maxshape=(None, 8, 8, 3))
    grow = h5py.VirtualSource(str(tmp_path / "grow.h5"), "d", shape=(12, 8, 8, 3),
                              maxshape=(None, 8, 8, 3))  # fmt: skip
    lay[0 : h5py.h5s.UNLIMITED] = grow[0 : h5py.h5s.UNLIMITED]
    with h5py.File(tmp_path / "unlimited.h5", "w") as f:
        f.create_virtual_dataset("images", lay, fillvalue=0)
    with h5py.File(tmp_path / "self.h5", "w") as f:
        f["raw"] = (
            np.arange(300 * 8 * 8 * 3, dtype=np.uint32).astype(np.uint8).reshape(300, 8, 8, 3)
        )
        lay = h5py.VirtualLayout((300, 8, 8, 3), np.uint8)
        raw = h5py.VirtualSource(".", "raw", shape=(300, 8, 8, 3))
        for i, r in enumerate(np.random.default_rng(0).permutation(300)):
            lay[i] = raw[int(r)]
        f.create_virtual_dataset("images", lay)
    vds("strided.h5", (10, 8, 8, 3), (slice(None), even[0::2]))
    for name in ("strided.h5", "unlimited.h5", "self.h5"):
        with h5py.File(tmp_path / name, "r") as f:
            read = f["images"][...]
        out = convert(str(tmp_path / name), str(tmp_path / f"{name}.zarr.zip"), order="source")
        np.testing.assert_array_equal(di.open_zarr(out).images.compute(), read)


def test_numpy_files_under_the_other_name_and_empty_archives_are_said(tmp_path):
    # a .npy named .npz failed with "'numpy.ndarray' object does not support the context
    # manager protocol"; an empty .npz with labels with numpy's reshape error
    np.save(tmp_path / "x.npy", np.zeros((5, 8, 8, 3), np.uint8))
    (tmp_path / "x.npz").write_bytes((tmp_path / "x.npy").read_bytes())
    with pytest.raises(ValueError, match=r"'.*x.npz' is a .npy file .*rename it to .npy"):
        convert(str(tmp_path / "x.npz"), str(tmp_path / "x.zarr.zip"))
    np.savez(tmp_path / "e.npz", images=np.zeros((0, 8, 8, 3), np.uint8), labels=np.zeros(0, int))
    with pytest.raises(ValueError, match=r"e.npz', array 'images': holds no images"):
        convert(str(tmp_path / "e.npz"), str(tmp_path / "e.zarr.zip"), labels="labels")


def test_hdf5_columns_in_groups_and_array_typed_images(tmp_path):
    """A column or box dataset inside a group (data/ids) was refused, its message offering a
    rename convert has no way to do: it is stored by its own name now. Images of HDF5's
    array type (one value per row, each an image) failed with numpy's dtype parse error."""
    ids, bbox = np.arange(6) * 7, np.tile([1.0, 1.0, 5.0, 5.0], (6, 1))
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f["data/images"] = np.arange(6 * 8 * 8 * 3, dtype=np.uint8).reshape(6, 8, 8, 3)
        f["data/labels"] = np.arange(6) % 2
        f["data/ids"], f["data/bbox"], f["meta/ids"] = ids, bbox, ids
    out = convert(
        str(tmp_path / "n.h5"), str(tmp_path / "n.zarr.zip"), images="data/images",
        labels="data/labels", columns=["data/ids"], boxes=["data/bbox"], order="source",
    )  # fmt: skip
    back = di.open_zarr(out)
    np.testing.assert_array_equal(np.asarray(back.arrays["ids"]), ids)  # the oracle: h5py's
    np.testing.assert_array_equal(np.asarray(back.arrays["bbox"]), bbox)
    assert back.boxes == ("bbox",)
    with pytest.raises(ValueError, match="would both be stored as 'ids'"):
        convert(
            str(tmp_path / "n.h5"), str(tmp_path / "m.zarr.zip"), images="data/images",
            labels="data/labels", columns=["data/ids", "meta/ids"],
        )  # fmt: skip
    with h5py.File(tmp_path / "sub.h5", "w") as f:
        f.create_dataset("images", shape=(10,), dtype=np.dtype(("u1", (8, 8, 3))))
        f["images"][...] = np.ones((10, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"HDF5 array type .*shape \(10, 8, 8, 3\)"):
        convert(str(tmp_path / "sub.h5"), str(tmp_path / "sub.zarr.zip"))


@pytest.mark.parametrize("kind", ["h5", "npy"])
def test_a_source_file_written_again_after_it_was_opened_is_refused(tmp_path, kind):
    # the set is lazy: images were read from the new file beside labels read from the old
    # one (numpy's or h5py's errors when its length changed, the new pixels stored when not)
    x = np.arange(50 * 4 * 4, dtype=np.uint8).reshape(50, 4, 4, 1)
    path = tmp_path / f"a.{kind}"
    _save_images(path, kind, x)
    ds = open_array_set(str(path))
    np.testing.assert_array_equal(ds.images[:5].compute(), x[:5])  # read as opened
    # a chmod or a hard link changes no byte: read as opened (the first version of this
    # check took the change time, which they move, and refused them)
    path.chmod(0o444)
    os.link(path, tmp_path / f"backup.{kind}")
    np.testing.assert_array_equal(ds.images.compute(), x)
    path.chmod(0o644)
    _save_images(path, kind, 255 - x)  # the same shape, new values
    with pytest.raises(ValueError, match="changed since it was opened"):
        di.to_zarr(ds, tmp_path / "s.zarr.zip")


def test_gray_images_of_an_imageset_are_stored_with_their_channel_axis(tmp_path):
    # (N, H, W) images were stored 3-D with dimension names of no image (images_1, images_2),
    # unlike convert's (N, H, W, 1), and random_crop refused them as "2-D"
    x = np.random.default_rng(0).integers(0, 256, (10, 16, 16), dtype=np.uint8)
    out = di.to_zarr(di.ImageSet(x, np.arange(10) % 2), tmp_path / "g.zarr.zip", order="source")
    arr = zarr.open_group(zarr.storage.ZipStore(out, mode="r"), mode="r")["images"]
    assert arr.shape == (10, 16, 16, 1)
    assert list(arr.metadata.dimension_names) == ["sample", "y", "x", "channel"]
    np.testing.assert_array_equal(arr[...][..., 0], x)  # the oracle: the array given
    crop = di.transforms.random_crop((8, 8))
    images, _ = next(iter(di.BatchIterator(out, batch_size=4, transform=crop, shuffle=False)))
    assert images.shape == (4, 8, 8, 1)


def test_a_relative_array_path_is_read_from_where_the_set_was_made(tmp_path, monkeypatch):
    # a dask worker started in another folder read the blocks of open_array_set("x.npy")
    # from its own folder: "'x.npy' is gone since it was opened" (or, with another x.npy
    # there, "changed since it was opened"); reading from another folder here is the same
    images = np.random.default_rng(0).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    (tmp_path / "made").mkdir()
    (tmp_path / "elsewhere").mkdir()
    np.save(tmp_path / "made" / "x.npy", images)
    np.save(tmp_path / "elsewhere" / "x.npy", images[::-1])  # another file of that name
    monkeypatch.chdir(tmp_path / "made")
    ds = open_array_set("x.npy")
    monkeypatch.chdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(ds.images.compute(), images)


def test_an_array_file_a_worker_cannot_see_is_said_so(tmp_path, monkeypatch):
    # read on another machine that does not see the file, it was "gone since it was
    # opened: put it back, or open it again", which neither helps
    from daskimg.read import fileio

    np.save(tmp_path / "x.npy", np.zeros((4, 2, 2, 3), np.uint8))
    ds = open_array_set(tmp_path / "x.npy")
    (tmp_path / "x.npy").unlink()
    with pytest.raises(FileNotFoundError, match="gone since it was opened"):
        ds.images.compute(scheduler="sync")
    monkeypatch.setattr(fileio, "file_view", lambda: ("another-machine", 1))
    with pytest.raises(FileNotFoundError, match=r"not found here; this process .* does not see"):
        ds.images.compute(scheduler="sync")
