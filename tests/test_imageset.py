from __future__ import annotations

import decimal
import logging
import os
import re
import shutil
import unicodedata
from pathlib import Path

import dask
import dask.array
import numpy as np
import pytest
from conftest import plain_group
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import daskimg as di
from daskimg.errors import DecodeError, NoImagesFoundError
from daskimg.read.decode import DecodeSpec, decode_file


def test_from_folder_labels_classes_paths(image_folder):
    ds = di.from_folder(image_folder, size=(16, 16), chunks=5)
    assert ds.classes == ("ant", "bee", "cat")
    assert len(ds) == 24
    # label = index of the folder name in the sorted class list
    for path, label in zip(ds.paths, ds.labels, strict=True):
        assert path.split("/")[0] == ds.classes[label]
    assert ds.images.shape == (24, 16, 16, 3)
    spec = DecodeSpec(size=(16, 16))
    first = decode_file(image_folder / ds.paths[0], spec)
    np.testing.assert_array_equal(ds.images[0].compute(), first)


def test_from_folder_ignores_hidden_and_non_image_files(image_folder):
    (image_folder / "ant" / ".DS_Store").write_bytes(b"x")
    (image_folder / "ant" / "notes.txt").write_text("hello")
    ds = di.from_folder(image_folder, size=(8, 8))
    assert len(ds) == 24
    assert not any(p.endswith((".txt", ".DS_Store")) for p in ds.paths)


def test_from_folder_errors(tmp_path):
    with pytest.raises(NoImagesFoundError, match="not a folder"):
        di.from_folder(tmp_path / "nope", size=(8, 8))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(NoImagesFoundError, match="no image files"):
        di.from_folder(tmp_path / "empty", size=(8, 8))


def test_predefined_split_folders(tmp_path):
    root = tmp_path / "data"
    di.testing.make_image_folder(
        root, n=12, classes=("a", "b"), split_dirs=("train", "val", "test")
    )
    # a class only present in train still gets the same index everywhere
    ds = di.from_folder(root, size=(8, 8))
    assert ds.classes == ("a", "b")
    parts = ds.split()
    assert set(parts) == {"train", "valid", "test"}
    assert sum(len(p) for p in parts.values()) == len(ds)
    for name, part in parts.items():
        folder = "val" if name == "valid" else name
        assert all(p.startswith(folder + "/") for p in part.paths)


def test_split_by_fractions_does_not_mix_predefined_splits(tmp_path):
    # ds.split({"train": 0.8, ...}) on a folder of train/ val/ test/ put test images in train
    root = tmp_path / "data"
    di.testing.make_image_folder(
        root, n=12, classes=("a", "b"), split_dirs=("train", "val", "test")
    )
    ds = di.from_folder(root, size=(8, 8))
    with pytest.raises(ValueError, match=r"predefined splits \['test', 'train', 'valid'\].*mix"):
        ds.split({"train": 0.8, "valid": 0.1, "test": 0.1})
    # carving a validation split out of train stays inside train
    carved = ds.split()["train"].split({"train": 0.75, "valid": 0.25}, seed=1)
    assert sum(len(p) for p in carved.values()) == 12 and min(len(p) for p in carved.values()) > 0
    assert all(p.startswith("train/") for part in carved.values() for p in part.paths)
    # on purpose: every sample divided anew
    anew = ds.split({"train": 0.5, "test": 0.5}, resplit=True)
    assert sorted(p for part in anew.values() for p in part.paths) == sorted(ds.paths)
    assert {p.split("/")[0] for p in anew["train"].paths} == {"train", "val", "test"}


def test_split_disjoint_stratified_deterministic():
    n = 1000
    labels = np.repeat(np.arange(5), [500, 300, 150, 45, 5])
    ds = di.ImageSet(
        np.zeros((n, 2, 2, 3), np.uint8),
        labels,
        classes=list("abcde"),
        columns={"idx": np.arange(n)},
    )
    parts = ds.split({"train": 0.8, "valid": 0.1, "test": 0.1}, seed=3)
    idx = {k: v.columns["idx"] for k, v in parts.items()}
    allidx = np.concatenate(list(idx.values()))
    assert len(allidx) == n
    assert len(np.unique(allidx)) == n
    for k, frac in {"train": 0.8, "valid": 0.1, "test": 0.1}.items():
        for c in range(5):
            total = (labels == c).sum()
            got = (parts[k].labels == c).sum()
            assert abs(got - frac * total) <= 1.0, (k, c, got, frac * total)
            assert got >= 1  # every class represented (smallest class has 5 >= 3 splits)
    again = ds.split({"train": 0.8, "valid": 0.1, "test": 0.1}, seed=3)
    for k in idx:
        np.testing.assert_array_equal(idx[k], again[k].columns["idx"])
    other = ds.split({"train": 0.8, "valid": 0.1, "test": 0.1}, seed=4)
    assert not np.array_equal(idx["test"], other["test"].columns["idx"])


@pytest.mark.parametrize(
    "fractions",
    [{"train": 0.7, "test": 0.2}, {"train": 1.2, "test": -0.2}, {}, {"a": float("nan"), "b": 1}],
)
def test_split_validates_fractions(fractions):
    ds = di.ImageSet(np.zeros((10, 2, 2, 3), np.uint8), np.arange(10) % 2)
    with pytest.raises(ValueError, match="fractions"):
        ds.split(fractions)


def test_split_of_a_tiny_file_set_reaches_every_split_or_says_why(tmp_path):
    # 3 photos in 2 classes, 0.8/0.1/0.1 stratified: valid and test got no sample, and
    # the empty file set crashed in dask ("Empty tuples are not allowed in chunks")
    root = tmp_path / "tiny"
    di.testing.make_image_folder(root, n=3, size=(8, 8))
    ds = di.from_folder(root, size=(8, 8))
    for stratify in (True, False):
        parts = ds.split({"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0, stratify=stratify)
        assert [len(p) for p in parts.values()] == [1, 1, 1]
        assert sorted(p for part in parts.values() for p in part.paths) == sorted(ds.paths)
        for part in parts.values():  # each split decodes its own file
            want = decode_file(root / part.paths[0], DecodeSpec(size=(8, 8)))
            np.testing.assert_array_equal(part.images.compute()[0], want)
    two = ds.take(np.array([0, 1]))
    with pytest.raises(ValueError, match=r"split 'test' \(0\.1 of 2 samples\) gets no sample"):
        two.split({"train": 0.8, "valid": 0.1, "test": 0.1})
    # a split of fraction 0 is empty, and says so when it would be stored
    empty = ds.split({"train": 1.0, "valid": 0.0})["valid"]
    assert len(empty) == 0 and empty.images.compute().shape == (0, 8, 8, 3)
    with pytest.raises(ValueError, match="empty; there is nothing to store"):
        di.to_zarr(empty, tmp_path / "valid.zarr.zip")


@pytest.mark.parametrize("given", [None, np.zeros((2, 4, 4, 3), np.uint8), {"images": 1}])
def test_to_zarr_of_no_imageset_says_what_to_pass(tmp_path, given):
    with pytest.raises(
        TypeError, match=r"to_zarr writes an ImageSet, got a (NoneType|ndarray|dict)"
    ):
        di.to_zarr(given, tmp_path / "x.zarr.zip")
    assert not list(tmp_path.iterdir())


def test_split_of_file_set_rebuilds_small_graph(image_folder):
    ds = di.from_folder(image_folder, size=(8, 8), chunks=4)
    parts = ds.split({"train": 0.5, "test": 0.5}, seed=0)
    train = parts["train"]
    # one decode task per block of the chosen files, and its view as images: no gather
    # across the original blocks
    assert len(dict(train.images.__dask_graph__())) == 2 * -(-len(train) // 4)
    spec = DecodeSpec(size=(8, 8))
    got = train.images.compute()
    for i, p in enumerate(train.paths):
        np.testing.assert_array_equal(got[i], decode_file(image_folder / p, spec))


def test_imageset_from_arrays_validates():
    with pytest.raises(ValueError, match="labels must have 3 rows"):
        di.ImageSet(np.zeros((3, 2, 2, 3), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="labels must lie in"):
        di.ImageSet(np.zeros((2, 2, 2, 3), np.uint8), [0, 2], classes=["a", "b"])
    with pytest.raises(ValueError, match="images must have shape"):
        di.ImageSet(np.zeros((3, 2)), [0, 1, 0])


def test_from_csv_with_bbox_columns(image_folder, tmp_path):
    files = sorted(image_folder.rglob("*.png"))
    lines = ["path,label,x0,y0,x1,y1,score,comment"]
    for i, f in enumerate(files):
        rel = f.relative_to(image_folder).as_posix()
        lines.append(f"{rel},{f.parent.name},{i},{i + 1},{i + 2},{i + 3},{i / 10},hello")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    ds = di.from_csv(
        csv, root=image_folder, size=(8, 8), columns={"bbox": ["x0", "y0", "x1", "y1"]}
    )
    assert ds.classes == ("ant", "bee", "cat")
    assert ds.columns["bbox"].shape == (len(files), 4)
    np.testing.assert_array_equal(ds.columns["bbox"][:, 0], np.arange(len(files), dtype=np.float32))
    default = di.from_csv(csv, root=image_folder, size=(8, 8))
    # 'comment' is not numeric; source_size is derived from the files
    assert set(default.columns) == {"x0", "y0", "x1", "y1", "score", "source_size"}
    spec = DecodeSpec(size=(8, 8))
    np.testing.assert_array_equal(ds.images[3].compute(), decode_file(files[3], spec))


@pytest.mark.parametrize("url", [False, True])
def test_from_csv_a_file_on_two_rows_is_refused_naming_both_lines(image_folder, tmp_path, url):
    # a CSV with one row per box (or a pasted-twice row) made the image two samples, which
    # split() could put in train and in test
    files = sorted(f.relative_to(image_folder).as_posix() for f in image_folder.rglob("*.png"))
    rows = [f"{files[0]},ant,0,0,4,4", f"{files[1]},bee,0,0,2,2", f"./{files[0]},ant,4,4,8,8"]
    text = "path,label,x0,y0,x1,y1\n" + "\n".join(rows) + "\n"
    csv, root = tmp_path / "boxes.csv", str(image_folder)
    csv.write_text(text)
    if url:
        fsspec = pytest.importorskip("fsspec")
        fs = fsspec.filesystem("memory")
        fs.pipe("/daskimg-test-csv-twice/boxes.csv", text.encode())
        csv, root = "memory://daskimg-test-csv-twice/boxes.csv", "memory://daskimg-test-csv-twice"
    try:
        with pytest.raises(
            ValueError, match=r"lines 2 and 4: both name the same file \('.*' and '\./.*one row per"
        ):
            di.from_csv(csv, root=root, size=(8, 8), boxes={"bbox": ["x0", "y0", "x1", "y1"]})
    finally:
        if url:
            fs.rm("/daskimg-test-csv-twice", recursive=True)
    csv = tmp_path / "once.csv"
    csv.write_text("path,label\n" + "\n".join(f"{f},{f.split('/')[0]}" for f in files) + "\n")
    assert len(di.from_csv(csv, root=image_folder, size=(8, 8))) == len(files)


def test_from_csv_a_file_reached_again_through_a_link_is_refused(image_folder, tmp_path):
    # rows naming one file through a file link or a link to its folder were two samples of
    # one image, under two labels (paths were compared as text)
    files = sorted(image_folder.rglob("*.png"))
    root = tmp_path / "root"
    shutil.copytree(image_folder, root)
    first = files[0].relative_to(image_folder)
    (root / "alias.png").symlink_to(first)  # a file link
    (root / "again").symlink_to(first.parent)  # a link to its folder
    for other, line in [("alias.png", 3), (f"again/{first.name}", 3)]:
        csv = tmp_path / "twice.csv"
        csv.write_text(f"path,label\n{first.as_posix()},ant\n{other},bee\n")
        with pytest.raises(ValueError, match=rf"lines 2 and {line}: .*{other!r}.* same file"):
            di.from_csv(csv, root=root, size=(8, 8))
    # links that only share a target are separate samples (git-annex and DVC keep identical
    # files once), as from_folder reads them
    annex = root / ".git" / "annex"
    annex.mkdir(parents=True)
    shutil.copy(files[2], annex / "SHA256-x.png")
    for name in ("one.png", "two.png"):
        (root / name).symlink_to(os.path.join(".git", "annex", "SHA256-x.png"))
    csv.write_text("path,label\none.png,ant\ntwo.png,bee\n")
    assert len(di.from_csv(csv, root=root, size=(8, 8))) == 2
    # a link to a file no other row names is read (a cache of files elsewhere)
    csv.write_text(
        f"path,label\nalias.png,ant\n{files[1].relative_to(image_folder).as_posix()},bee\n"
    )
    ds = di.from_csv(csv, root=root, size=(8, 8))
    np.testing.assert_array_equal(
        ds.images[0].compute(), decode_file(str(files[0]), DecodeSpec(size=(8, 8)))
    )


def test_from_csv_labels_that_are_numbers_and_class_names_are_not_guessed(tmp_path):
    # class folders 0..10 sort as '0', '1', '10', '2', ...: a valid CSV naming them was read
    # as indices, so '2' became class '10' and 9 of 11 labels were wrong, silently
    names = [str(k) for k in range(11)]
    di.testing.make_image_folder(tmp_path / "train", n=11, size=(8, 8), classes=names)
    train = di.from_folder(tmp_path / "train", size=(8, 8))
    assert train.classes[2] == "10"
    csv = tmp_path / "valid.csv"
    files = sorted((tmp_path / "train").rglob("*.png"))
    csv.write_text(
        "path,label\n"
        + "".join(f"{f.relative_to(tmp_path).as_posix()},{f.parent.name}\n" for f in files)
    )
    kw = {"root": tmp_path, "size": (8, 8), "classes": train.classes}
    with pytest.raises(
        ValueError, match=r"line \d+: label '\d+' is both the class named.*labels_are="
    ):
        di.from_csv(csv, **kw)
    valid = di.from_csv(csv, **kw, labels_are="names")
    for path, label in zip(valid.paths, valid.labels, strict=True):
        assert valid.classes[label] == Path(path).parent.name  # the folder is the oracle
    as_index = di.from_csv(csv, **kw, labels_are="indices")
    assert sorted(as_index.labels.tolist()) == list(range(11))
    # class names that are not numbers, or numbers that agree with their index: as before
    plain = di.from_csv(csv, root=tmp_path, size=(8, 8), classes=[str(k) for k in range(11)])
    assert [plain.classes[k] for k in plain.labels] == [Path(p).parent.name for p in plain.paths]
    with pytest.raises(ValueError, match="labels_are must be"):
        di.from_csv(csv, **kw, labels_are="name")
    # the same with a row without label (-1) and labels written as floats ("2.0", pandas)
    lines = csv.read_text().splitlines()
    other = [ln.rsplit(",", 1) for ln in lines[1:]]
    text = [f"{p},{'-1' if i == 0 else lab + '.0'}" for i, (p, lab) in enumerate(other)]
    csv.write_text("path,label\n" + "\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"is both the class named"):
        di.from_csv(csv, **kw)


def test_from_csv_labels_written_with_an_exponent_are_not_guessed(tmp_path):
    # '2E1', '1E1', '3E1' (codes, as folders named so are) became indices 20, 10, 30 with
    # no class names; beside '20' the two merged into one class without a word. Yet numpy's
    # savetxt writes index 10 as '1.000000e+01': either reading may be wrong, so neither is
    # guessed
    files = di.testing.make_image_folder(tmp_path / "im", n=6, size=(8, 8), classes=("x",))
    rows = [f.relative_to(tmp_path / "im").as_posix() for f in files]
    csv = tmp_path / "l.csv"
    kw = {"root": tmp_path / "im", "size": (8, 8)}

    def write(labels: list[str]) -> None:
        csv.write_text(
            "path,label\n" + "".join(f"{r},{c}\n" for r, c in zip(rows, labels, strict=True))
        )

    codes = ["2E1", "2E1", "1E1", "1E1", "3E1", "3e1"]
    for labels in (codes, [f"{k:.6e}" for k in (0, 1, 2, 10, 11, 3)], ["2E1", "20", *"1122"]):
        write(labels)
        with pytest.raises(ValueError, match=r"line 2: label .* exponent.*labels_are='indices'"):
            di.from_csv(csv, **kw)
        as_index = di.from_csv(csv, **kw, labels_are="indices")  # the numbers they spell
        assert as_index.labels.tolist() == [int(float(v)) for v in labels]
    write(codes)
    ds = di.from_csv(csv, **kw, labels_are="names")
    assert ds.classes == tuple(sorted(set(codes)))
    assert [ds.classes[k] for k in ds.labels] == codes
    # beside labels that are no numbers, they are names
    write(["cat", "1e3", "dog", "cat", "1e3", "dog"])
    assert di.from_csv(csv, **kw).classes == ("1e3", "cat", "dog")


def test_from_csv_label_matching_a_class_name_with_spaces_as_written(tmp_path):
    # train read from a folder "cat " keeps the space; valid's CSV naming it "cat " (quoted)
    # was stripped to 'cat' and refused as "not exactly" the class, with no way to write it
    for name in ("cat ", "dog"):
        di.testing.make_image_folder(tmp_path / "train" / name, n=1, size=(8, 8), classes=("x",))
    train = di.from_folder(tmp_path / "train", size=(8, 8))
    assert train.classes == ("cat ", "dog")
    files = di.testing.make_image_folder(tmp_path / "v", n=3, size=(8, 8), classes=("x",))
    rows = [f.relative_to(tmp_path / "v").as_posix() for f in files]
    csv = tmp_path / "valid.csv"
    csv.write_text(f'path,label\n{rows[0]},"cat "\n{rows[1]},dog\n{rows[2]}, dog\n')
    valid = di.from_csv(csv, root=tmp_path / "v", size=(8, 8), classes=train.classes)
    assert [valid.classes[k] for k in valid.labels] == ["cat ", "dog", "dog"]
    # written without its space, the error says how to write it (also beside rows that do)
    for first in ("cat", '"cat "'):
        csv.write_text(f"path,label\n{rows[0]},{first}\n{rows[1]},dog\n{rows[2]},cat\n")
        with pytest.raises(ValueError, match=r"line \d: label 'cat' .*write 'cat ' in the CSV"):
            di.from_csv(csv, root=tmp_path / "v", size=(8, 8), classes=train.classes)


def test_from_csv_float_written_labels_that_are_class_names_are_not_taken_as_indices(tmp_path):
    # a training CSV of float-written labels read as names gives the classes sorted as text
    # ('0.0', '1.0', '10.0', '2.0'); the next CSV, spelled alike, had '2.0' read as index 2
    # (class '10.0'), silently: the names as written are compared, not only '2'
    names = ["0.0", "1.0", "2.0", "10.0"]
    rng = np.random.default_rng(3)
    for i in range(len(names)):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(tmp_path / f"im{i}.png")
    rows = [f"im{i}.png,{name}" for i, name in enumerate(names)]
    (tmp_path / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    kw = {"root": tmp_path, "size": (8, 8)}
    train = di.from_csv(tmp_path / "train.csv", **kw, labels_are="names")
    assert train.classes == ("0.0", "1.0", "10.0", "2.0")
    (tmp_path / "valid.csv").write_text("path,label\nim2.png,2.0\nim1.png,1.0\n")
    with pytest.raises(ValueError, match=r"line 2: label '2.0' is both the class named"):
        di.from_csv(tmp_path / "valid.csv", **kw, classes=train.classes)
    valid = di.from_csv(tmp_path / "valid.csv", **kw, classes=train.classes, labels_are="names")
    assert [valid.classes[k] for k in valid.labels] == ["2.0", "1.0"]  # the CSV as written
    # names that agree with their index ('0.0', '1.0' at 0, 1) are read as before
    (tmp_path / "agree.csv").write_text("path,label\nim1.png,1.0\nim0.png,0.0\n")
    agree = di.from_csv(tmp_path / "agree.csv", **kw, classes=["0.0", "1.0"])
    assert agree.labels.tolist() == [1, 0]
    # the same number in other spellings names the class too, and a class '-1' is no "no
    # label": each was read as indices, silently (-1/1 classes lost every negative sample)
    for classes, labels, says in [
        (train.classes, ["0", "2", "1"], r"label '2' is both the class named '2\.0' \(index 3\)"),
        (train.classes, ["0.0", "2.0", "1"], r"label '2\.0' is both"),
        (["-1", "1"], ["-1", "1", "-1"], r"label '-1' is both the class named '-1'.*no label"),
        (["+1", "-1"], ["1", "-1", "1"], r"label '1' is both the class named '\+1'"),
    ]:
        rows = [f"im{i}.png,{label}" for i, label in enumerate(labels)]
        (tmp_path / "v.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
        with pytest.raises(ValueError, match=says):
            di.from_csv(tmp_path / "v.csv", **kw, classes=classes)
        if classes == ["-1", "1"]:  # read as names when told so
            named = di.from_csv(tmp_path / "v.csv", **kw, classes=classes, labels_are="names")
            assert [named.classes[k] for k in named.labels] == labels
    # -1 naming no class is no label, as before
    (tmp_path / "v.csv").write_text("path,label\nim0.png,0\nim1.png,-1\n")
    assert di.from_csv(tmp_path / "v.csv", **kw, classes=["0", "1"]).labels.tolist() == [0, -1]


def test_from_csv_zero_padded_labels_name_classes_as_folders_do(tmp_path):
    # folders 01, 02, 03 are classes 0, 1, 2; a CSV naming them "01", "02" was read as the
    # indices 1, 2 (classes "02", "03"): every label one class off, silently
    names = ["01", "02", "03"]
    di.testing.make_image_folder(tmp_path / "train", n=6, size=(8, 8), classes=names)
    train = di.from_folder(tmp_path / "train", size=(8, 8))
    files = sorted((tmp_path / "train").rglob("*.png"))
    rows = [(f.relative_to(tmp_path).as_posix(), f.parent.name) for f in files]
    csv = tmp_path / "valid.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    for classes in (train.classes, None):  # given, or found in the CSV
        valid = di.from_csv(csv, root=tmp_path, size=(8, 8), classes=classes)
        assert [valid.classes[k] for k in valid.labels] == [lab for _, lab in rows]
    # said to be indices, "01" is index 1
    as_index = di.from_csv(csv, root=tmp_path, size=(8, 8), labels_are="indices")
    assert as_index.labels.tolist() == [int(lab) for _, lab in rows]
    # "01" beside "1", or "1_0" (Python's int() reads 10) beside plain numbers: neither
    # reading is safe
    # codes of one width ("00" .. "11", as folders are named to sort): names, "10" too
    codes = [f"{k:02d}" for k in range(12)]
    for k in range(12):
        di.testing.make_image(seed=k).save(tmp_path / f"c{k}.png")
    csv.write_text("path,label\n" + "".join(f"c{k}.png,{c}\n" for k, c in enumerate(codes)))
    for classes in (codes, None):
        got = di.from_csv(csv, root=tmp_path, size=(8, 8), classes=classes)
        assert [got.classes[k] for k in got.labels] == codes
    # a whole number written as a float keeps being an index ("05.0" is 5)
    csv.write_text(f"path,label\n{rows[0][0]},05.0\n{rows[1][0]},1\n")
    assert di.from_csv(csv, root=tmp_path, size=(8, 8)).labels.tolist() == [5, 1]
    for odd, plain in (("01", "1"), ("1_0", "2")):
        csv.write_text(f"path,label\n{rows[0][0]},{odd}\n{rows[1][0]},{plain}\n")
        with pytest.raises(ValueError, match=r"plain whole numbers.*labels_are="):
            di.from_csv(csv, root=tmp_path, size=(8, 8))


def test_lazy_labels_are_checked_as_numpy_ones_are():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    for bad, says in (
        (np.array([0, 1.7, 1, 0]), "whole numbers"),
        (np.array([0, 2**64 - 1, 1, 0], np.uint64), "beyond the int64"),
        (np.array([0, 7, 1, 0]), "must lie in 0..2"),
    ):
        for labels in (bad, dask.array.from_array(bad, chunks=2)):
            with pytest.raises(ValueError, match=says):
                di.ImageSet(images, labels, classes=["a", "b", "c"])
    ds = di.ImageSet(images, dask.array.from_array(np.array([0, 1, 2, 1]), chunks=2))
    assert isinstance(ds.labels, np.ndarray)  # as documented: labels are numpy
    parts = ds.split({"a": 0.5, "b": 0.5}, seed=0)
    assert sorted(np.concatenate([p.labels for p in parts.values()]).tolist()) == [0, 1, 1, 2]


def test_from_csv_refuses_paths_outside_root(image_folder, tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("path,label\n../../etc/passwd,a\n")
    with pytest.raises(ValueError, match="outside root"):
        di.from_csv(csv, root=image_folder, size=(8, 8))
    csv.write_text("file,label\nx.png,a\n")
    with pytest.raises(ValueError, match="no column 'path'"):
        di.from_csv(csv, root=image_folder, size=(8, 8))
    # a URL in the path column was joined to root ('root/http:/example.com/0.png') and
    # failed when decoded, as no such file, naming no line
    first = sorted(p.relative_to(image_folder) for p in image_folder.rglob("*.png"))[0]
    for url in ("http://example.com/0.png", "file:///data/0.png", "s3://bucket/0.png"):
        csv.write_text(f"path,label\n{first.as_posix()},a\n{url},a\n")
        with pytest.raises(ValueError, match=rf"line 3: path '{url}' is a URL"):
            di.from_csv(csv, root=image_folder, size=(8, 8))


def _pillow_rgb(path):
    """Pillow's own decode of a file (the oracle; the tests use the files' own size)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_from_folder_follows_symlinks_out_of_the_root(tmp_path):
    # a Hugging Face / DVC / git-annex style tree: the files (or a whole class folder) are
    # symbolic links into a cache outside the root
    blobs = di.testing.make_image_folder(
        tmp_path / "cache", n=6, size=(12, 10), classes=("a", "b"), seed=3
    )
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    for i, f in enumerate(blobs[:3]):
        (root / "cat" / f"photo {i} é.png").symlink_to(f)
    (root / "dog").symlink_to(tmp_path / "cache" / "b", target_is_directory=True)
    ds = di.from_folder(root, size=(12, 10))
    assert ds.classes == ("cat", "dog")
    assert ds.paths.tolist() == [
        "cat/photo 0 é.png",
        "cat/photo 1 é.png",
        "cat/photo 2 é.png",
        *(f"dog/{f.name}" for f in sorted(blobs[3:])),
    ]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    got = ds.images.compute()
    for i, rel in enumerate(ds.paths):
        np.testing.assert_array_equal(got[i], _pillow_rgb(root / rel))


def test_from_csv_keeps_the_csv_path_of_a_symlink(tmp_path):
    blobs = di.testing.make_image_folder(tmp_path / "cache", n=2, size=(12, 10), classes=("a",))
    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    for i, f in enumerate(blobs):
        (root / "imgs" / f"{i}.png").symlink_to(f)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimgs/0.png,cat\nimgs/1.png,dog\n")
    ds = di.from_csv(csv, root=root, size=(12, 10))
    assert ds.paths.tolist() == ["imgs/0.png", "imgs/1.png"]
    np.testing.assert_array_equal(ds.images[1].compute(), _pillow_rgb(blobs[1]))
    csv.write_text("path,label\nimgs/../../cache/a/x.png,cat\n")
    with pytest.raises(ValueError, match="outside root"):
        di.from_csv(csv, root=root, size=(12, 10))


def test_from_csv_reads_absolute_paths_through_the_link_root_was_named_by(tmp_path):
    # /data -> /mnt/disk1/data, macOS's /tmp -> /private/tmp: a CSV of absolute paths
    # written with the name the user knows was refused as "outside root '<real folder>'"
    files = di.testing.make_image_folder(tmp_path / "real", n=3, size=(12, 10), classes=("a",))
    (tmp_path / "data").symlink_to(tmp_path / "real", target_is_directory=True)
    root = tmp_path / "data"
    csv = tmp_path / "labels.csv"
    rows = [f"{root / 'a' / f.name},a" for f in sorted(files)[:2]]
    rows.append(f"{tmp_path / 'real' / 'a' / sorted(files)[2].name},a")  # its real name too
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = di.from_csv(csv, root=root, size=(12, 10))
    assert ds.paths.tolist() == [f"a/{f.name}" for f in sorted(files)]
    got = ds.images.compute()
    for i, f in enumerate(sorted(files)):
        np.testing.assert_array_equal(got[i], _pillow_rgb(f))
    csv.write_text(f"path,label\n{tmp_path / 'a' / files[0].name},a\n")
    with pytest.raises(
        ValueError, match=f"outside root '{root}' \\(the folder '{tmp_path / 'real'}'"
    ):
        di.from_csv(csv, root=root, size=(12, 10))
    # through another link to the same folder, or a link to a folder inside it: read
    (tmp_path / "again").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "cls").symlink_to(tmp_path / "real" / "a", target_is_directory=True)
    first, second = sorted(files)[:2]
    rows = [f"{tmp_path / 'again' / 'a' / first.name},a", f"{tmp_path / 'cls' / second.name},a"]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = di.from_csv(csv, root=root, size=(12, 10))
    assert ds.paths.tolist() == [f"a/{first.name}", f"a/{second.name}"]
    # through root's link into a link inside root that points out of it (such links are
    # followed wherever they point): read, as its relative name and its real folder's are
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "o.png").write_bytes(second.read_bytes())
    (tmp_path / "real" / "inout").symlink_to(tmp_path / "outside", target_is_directory=True)
    for named in ("inout/o.png", tmp_path / "real/inout/o.png", root / "inout/o.png"):
        csv.write_text(f"path,label\n{named},a\n")
        ds = di.from_csv(csv, root=root, size=(12, 10))
        assert ds.paths.tolist() == ["inout/o.png"]
        np.testing.assert_array_equal(ds.images[0].compute(), _pillow_rgb(second))
    # a root named through a link and then '..' (lexically another folder): a file beside
    # it in that other folder is outside the real root, not the real root's file of that name
    (tmp_path / "real" / "a" / "sub").mkdir()
    (tmp_path / "L").symlink_to(tmp_path / "real" / "a" / "sub", target_is_directory=True)
    (tmp_path / first.name).write_bytes(first.read_bytes())  # lexically under 'L/..'
    csv.write_text(f"path,label\n{tmp_path / first.name},a\n")
    with pytest.raises(ValueError, match="points outside root"):
        di.from_csv(csv, root=tmp_path / "L" / "..", size=(12, 10))


def test_from_csv_reads_a_header_with_a_byte_order_mark(image_folder, tmp_path):
    # Excel's "CSV UTF-8" starts the file with a BOM
    files = sorted(image_folder.rglob("*.png"))[:3]
    csv = tmp_path / "excel.csv"
    rows = "".join(f"{f.relative_to(image_folder).as_posix()},{f.parent.name}\n" for f in files)
    csv.write_text("path,label\n" + rows, encoding="utf-8-sig")
    ds = di.from_csv(csv, root=image_folder, size=(8, 8))
    assert ds.paths.tolist() == [f.relative_to(image_folder).as_posix() for f in files]
    assert ds.classes == tuple(sorted({f.parent.name for f in files}))


@pytest.mark.parametrize("labels", ["cat,,dog", "0,,1", "0, ,1"])
def test_from_csv_missing_label_names_the_line(image_folder, tmp_path, labels):
    files = sorted(image_folder.rglob("*.png"))[:3]
    csv = tmp_path / "holes.csv"
    rows = [
        f"{f.relative_to(image_folder).as_posix()},{v}"
        for f, v in zip(files, labels.split(","), strict=True)
    ]
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"line 3: no 'label'.*label_column=None"):
        di.from_csv(csv, root=image_folder, size=(8, 8))


def test_imageset_labels_must_be_whole_class_indices():
    images = np.zeros((3, 2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"labels must be integer class indices.*'cat'"):
        di.ImageSet(images, ["cat", "dog", "cat"], classes=["cat", "dog"])
    with pytest.raises(ValueError, match=r"labels must be whole numbers.*0\.5.*columns="):
        di.ImageSet(images, [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"labels, row 1: NaN is no class index.*-1"):
        di.ImageSet(images, [0.0, np.nan, 1.0])
    # in an object array (a mixed DataFrame's row): 1.5 was cut to 1, 2**64 and inf failed
    # with a bare OverflowError, None and <NA> with int()'s TypeError
    for values, says in [
        ([0, 1.5, 2], r"labels, row 1: labels must be whole numbers.*1\.5"),
        ([0, 2**64, 1], r"labels, row 1: 18446744073709551616 is beyond the int64"),
        ([0, float("inf"), 1], r"labels, row 1: labels must be whole numbers.*inf"),
        ([0, None, 1], r"labels, row 1: None is no class index.*-1"),
        ([0, decimal.Decimal("sNaN"), 1], r"labels, row 1: nan is no class index.*-1"),
        (["cat", 0, 1], r"got names such as 'cat'"),  # it quoted the 0 as the name
    ]:
        with pytest.raises(ValueError, match=says):
            di.ImageSet(images, np.array(values, dtype=object), classes=["a", "b", "c"])
    mixed = di.ImageSet(images, np.array([0, 2.0, np.int64(1)], dtype=object), classes=list("abc"))
    assert mixed.labels.tolist() == [0, 2, 1] and mixed.labels.dtype == np.int64
    # whole numbers of other types (Decimal, Fraction, numpy bools, 0-d arrays) are read
    # exactly; they were "no class index ... mark with -1"
    from decimal import Decimal
    from fractions import Fraction

    for values in (
        [0, Decimal(2), 1],
        [Fraction(0), Fraction(2), Fraction(1)],
        [np.bool_(False), np.array(2), np.int8(1)],
    ):
        got = di.ImageSet(images, np.array(values, dtype=object), classes=list("abc")).labels
        assert got.tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match=r"labels, row 1: 1j \(complex\) is no class index"):
        di.ImageSet(images, np.array([0, 1j, 1], dtype=object), classes=list("abc"))
    # dates were stored as their integers: 1 ns after 1970 became class 1
    with pytest.raises(ValueError, match=r"labels, row 1: .*datetime64.* is no class index"):
        di.ImageSet(images, np.array([0, np.datetime64(1, "ns"), 1], dtype=object))
    with pytest.raises(ValueError, match=r"got datetime64\[ns\] values.*integer class indices"):
        di.ImageSet(images, np.array([0, 1, 2], dtype="M8[ns]"))
    with pytest.raises(ValueError, match=r"got timedelta64\[s\] values"):
        di.ImageSet(images, np.array([0, 1, 2], dtype="m8[s]"))
    whole = di.ImageSet(images, np.array([0.0, 1.0, 1.0]), classes=["a", "b"])
    assert whole.labels.dtype == np.int64
    np.testing.assert_array_equal(whole.labels, [0, 1, 1])


def test_from_folder_descends_into_symlinked_subfolders_once(tmp_path):
    # "files are found recursively below each class folder", also through a linked
    # subfolder; a link back up (a loop) is not followed forever
    blobs = di.testing.make_image_folder(tmp_path / "cache", n=2, size=(12, 10), classes=("a",))
    root = tmp_path / "data"
    (root / "cat" / "own").mkdir(parents=True)
    (root / "cat" / "linked").symlink_to(tmp_path / "cache" / "a", target_is_directory=True)
    (root / "cat" / "own" / "loop").symlink_to(root / "cat", target_is_directory=True)
    Image.open(blobs[0]).save(root / "cat" / "own" / "x.png")
    # one class whose images are all in folders below it: said to be one on purpose (else
    # refused as a wrapping folder, like PetImages/{Cat,Dog})
    ds = di.from_folder(root, size=(12, 10), classes=["cat"])
    assert ds.paths.tolist() == [*(f"cat/linked/{f.name}" for f in sorted(blobs)), "cat/own/x.png"]
    got = ds.images.compute()
    for i, rel in enumerate(ds.paths):
        np.testing.assert_array_equal(got[i], _pillow_rgb(root / rel))


def test_take_with_a_boolean_mask_selects_like_numpy(indexed_set):
    # ds.take(ds.labels == 1) must not read the mask as the indices 0 and 1
    images = indexed_set.images.compute()
    mask = indexed_set.labels == 1
    sub = indexed_set.take(mask)
    assert len(sub) == int(mask.sum())
    np.testing.assert_array_equal(sub.images.compute(), images[mask])
    np.testing.assert_array_equal(sub.labels, indexed_set.labels[mask])
    with pytest.raises(IndexError, match="boolean mask of 3 values for 103 samples"):
        indexed_set.take(np.array([True, False, True]))


def test_from_csv_with_a_root_that_is_not_a_folder_fails_up_front(image_folder, tmp_path):
    # not only when the first block is decoded (or, with on_error="skip", after skipping all)
    files = sorted(image_folder.rglob("*.png"))[:2]
    csv = tmp_path / "labels.csv"
    rows = "".join(f"{f.relative_to(image_folder).as_posix()},{f.parent.name}\n" for f in files)
    csv.write_text("path,label\n" + rows)
    with pytest.raises(NoImagesFoundError, match=r"root '.*imgs' is not a folder.*root="):
        di.from_csv(csv, root=tmp_path / "imgs", size=(8, 8), on_error="skip")


@pytest.mark.parametrize("ext", [".jfif", ".JFIF", ".pgm", ".ppm", ".pbm", ".pnm"])
def test_from_folder_reads_the_jpeg_and_netpbm_endings_pillow_reads(tmp_path, ext):
    # browsers save JPEGs as .jfif; classic data sets (e.g. AT&T faces) are .pgm
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    im = di.testing.make_image((12, 10), seed=5)
    im = im.convert("1") if ext == ".pbm" else im.convert("L") if ext == ".pgm" else im
    im.save(root / "a" / f"x{ext}", format="JPEG" if ext.lower() == ".jfif" else "PPM")
    Image.new("RGB", (12, 10)).save(root / "a" / "y.png")
    ds = di.from_folder(root, size=(12, 10))
    assert ds.paths.tolist() == [f"a/x{ext}", "a/y.png"]
    np.testing.assert_array_equal(ds.images[0].compute(), _pillow_rgb(root / "a" / f"x{ext}"))


def test_from_csv_keeps_big_whole_numbers_exact(tmp_path):
    # float32 holds whole numbers exactly only up to 2**24: an ID column must not be rounded
    di.testing.make_image_folder(tmp_path / "imgs", n=3, size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    ids = [2**24 + 1, 9_007_199_254_740_993, -(2**31) - 7]
    lines = ["path,label,image_id,x0,score"]
    lines += [f"{f},a,{i},{k},{0.5 + k}" for k, (f, i) in enumerate(zip(files, ids, strict=True))]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    ds = di.from_csv(tmp_path / "l.csv", root=tmp_path / "imgs", size=(8, 8))
    assert ds.columns["image_id"].dtype == np.int64
    assert ds.columns["image_id"].tolist() == ids
    # small whole numbers and fractions stay float32, as documented
    assert ds.columns["x0"].dtype == np.float32 and ds.columns["x0"].tolist() == [0, 1, 2]
    assert ds.columns["score"].dtype == np.float32
    box = di.from_csv(
        tmp_path / "l.csv", root=tmp_path / "imgs", size=(8, 8), columns={"b": ["image_id", "x0"]}
    )
    assert box.columns["b"].dtype == np.int64 and box.columns["b"][:, 0].tolist() == ids


def test_from_csv_whole_float_labels_are_class_indices(tmp_path):
    # pandas writes an int column as "3.0" once it has held a NaN; "10.0" must not sort before "2.0"
    di.testing.make_image_folder(tmp_path / "imgs", n=5, size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    given = [2, 10, 0, 2]
    lines = ["path,label"] + [f"{f},{float(v)}" for f, v in zip(files[:4], given, strict=True)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    ds = di.from_csv(tmp_path / "l.csv", root=tmp_path / "imgs", size=(8, 8))
    assert ds.labels.tolist() == given
    # a fraction among whole numbers is neither: as names "10.0" would sort before "2.0"
    (tmp_path / "m.csv").write_text("\n".join([*lines, f"{files[4]},2.5"]) + "\n")
    with pytest.raises(ValueError, match=r"line 6: '2\.5'.*neither indices nor class names"):
        di.from_csv(tmp_path / "m.csv", root=tmp_path / "imgs", size=(8, 8))


@pytest.mark.parametrize("missing", ["NA", "NaN", "nan", "None", "null", "#N/A"])
def test_from_csv_missing_labels_spelled_out_are_refused_not_made_a_class(
    tmp_path, missing, caplog
):
    # R writes NA, pandas may write NaN: among integer labels such a cell used to turn the
    # whole column into names sorted as strings (2 -> index 3, 10 -> index 2), silently
    di.testing.make_image_folder(tmp_path / "imgs", n=5, size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    given = ["0", "1", "2", "10", missing]
    lines = ["path,label"] + [f"{f},{v}" for f, v in zip(files, given, strict=True)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"line 6: {re.escape(repr(missing))}.*missing labels"):
        di.from_csv(tmp_path / "l.csv", root=tmp_path / "imgs", size=(8, 8))
    # the same cell among class names stays a name, and a warning says so
    named = [*"abcd", missing]
    lines = ["path,label"] + [f"{f},{v}" for f, v in zip(files, named, strict=True)]
    (tmp_path / "n.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(tmp_path / "n.csv", root=tmp_path / "imgs", size=(8, 8))
    assert f"{missing!r}" in caplog.text and "taken as class names" in caplog.text
    assert list(ds.classes) == sorted(named)


def _csv_with_column(tmp_path, values, name="image_id"):
    di.testing.make_image_folder(tmp_path / "imgs", n=len(values), size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    lines = [f"path,label,{name}"] + [f"{f},a,{v}" for f, v in zip(files, values, strict=True)]
    (tmp_path / "l.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "l.csv"


def test_from_csv_keeps_big_whole_numbers_written_as_floats_exact(tmp_path):
    # pandas writes an int64 ID column as "16777217.0" once it held a NaN: float32 rounds it
    ids = [2**24 + 1, 2**24 + 3, -(2**31) - 7]
    csv_path = _csv_with_column(tmp_path, [f"{i}.0" for i in ids])
    ds = di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8))
    got = ds.columns["image_id"]
    assert np.array_equal(got.astype(np.float64), np.array(ids, dtype=np.float64))
    assert [int(v) for v in got] == ids


@pytest.mark.parametrize("columns", [None, {"ids": "image_id"}])
def test_from_csv_whole_numbers_beyond_int64_are_refused_naming_the_column(tmp_path, columns):
    huge = [2**64 + 1, 2**64 + 2]
    assert np.iinfo(np.int64).max < min(huge)  # the oracle: numpy cannot hold them as int64
    csv_path = _csv_with_column(tmp_path, huge)
    with pytest.raises(ValueError, match=r"image_id.*int64"):
        di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8), columns=columns)


def test_from_csv_label_beyond_int64_is_refused_naming_the_line(tmp_path):
    di.testing.make_image_folder(tmp_path / "imgs", n=2, size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    huge = 2**64 + 5
    assert np.iinfo(np.int64).max < huge  # the oracle: numpy cannot hold it
    (tmp_path / "l.csv").write_text(f"path,label\n{files[0]},1\n{files[1]},{huge}\n")
    with pytest.raises(ValueError, match=rf"line 3: label {huge} is too large"):
        di.from_csv(tmp_path / "l.csv", root=tmp_path / "imgs", size=(8, 8))


def test_from_csv_classes_given_keep_indices_across_split_csvs(tmp_path):
    # each CSV's own sorted names differ when a split lacks a class: zebra was 2 in train
    # and 1 in valid, where a model trained on train reads 1 as dog
    di.testing.make_image_folder(tmp_path / "imgs", n=6, size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    train_names = ["cat", "dog", "zebra"]
    valid_names = ["cat", "zebra", "zebra"]
    for name, labels, part in (
        ("train", train_names, files[:3]),
        ("valid", valid_names, files[3:]),
    ):
        rows = ["path,label"] + [f"{f},{v}" for f, v in zip(part, labels, strict=True)]
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    train = di.from_csv(tmp_path / "train.csv", root=tmp_path / "imgs", size=(8, 8))
    valid = di.from_csv(
        tmp_path / "valid.csv", root=tmp_path / "imgs", size=(8, 8), classes=train.classes
    )
    assert valid.classes == train.classes
    assert [valid.classes[i] for i in valid.labels] == valid_names
    assert di.from_csv(tmp_path / "valid.csv", root=tmp_path / "imgs", size=(8, 8)).classes == (
        "cat",
        "zebra",
    )  # without classes=, the CSV's own
    with pytest.raises(ValueError, match=r"line 3: label 'zebra' is not one of the classes given"):
        di.from_csv(tmp_path / "valid.csv", root=tmp_path / "imgs", size=(8, 8), classes=["cat"])
    (tmp_path / "ints.csv").write_text(f"path,label\n{files[0]},0\n{files[1]},3\n")
    with pytest.raises(ValueError, match=r"line 3: label 3 is not an index of the 3 classes"):
        di.from_csv(
            tmp_path / "ints.csv", root=tmp_path / "imgs", size=(8, 8), classes=train.classes
        )


def _label_csv(tmp_path, labels, name="l.csv"):
    di.testing.make_image_folder(tmp_path / "imgs", n=len(labels), size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    import csv

    with open(tmp_path / name, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)  # quotes what needs it ("a,b")
        out.writerow(["path", "label"])
        out.writerows(zip(files, labels, strict=True))
    return tmp_path / name


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        # a regression target: each value became a class, sorted as text ('10.5' < '9.5')
        (["9.5", "10.5", "0.25", "9.5"], r"line 2: column 'label' holds numbers with fractions"),
        # several labels in one cell: 'cat|dog' became a third class
        (["cat", "cat|dog", "dog", "dog"], r"line 3: label 'cat\|dog' .*holds several labels"),
        (["a;b", "b", "c", "a"], r"label 'a;b' .*holds several labels.*label of line \d"),
        # names that print alike: a zero-width space, a doubled inner space
        (
            ["cat", "cat\u200b", "dog", "dog"],
            r"'cat' \(line 2\) and 'cat.u200b' \(line 3\).*invisible",
        ),
        (
            ["big cat", "big  cat", "dog", "dog"],
            r"the same apart from invisible characters or spaces",
        ),
    ],
    ids=["fractions", "pipe", "semicolons", "zero-width", "spaces"],
)
def test_from_csv_labels_that_are_no_class_names_are_refused(tmp_path, labels, says):
    csv = _label_csv(tmp_path, labels)
    with pytest.raises(ValueError, match=says):
        di.from_csv(csv, root=tmp_path / "imgs", size=(8, 8))


def test_from_csv_names_that_merely_hold_a_separator_and_index_labels_read_as_before(tmp_path):
    import pandas as pd

    labels = ["rock|pop", "maillot", "maillot, tank suit", "animal|cat"]  # ImageNet's names
    csv = _label_csv(tmp_path, labels)
    ds = di.from_csv(csv, root=tmp_path / "imgs", size=(8, 8))
    oracle = pd.read_csv(csv)["label"].tolist()  # the oracle: pandas' reading of the cells
    assert [ds.classes[i] for i in ds.labels] == oracle
    asked = di.from_csv(
        _label_csv(tmp_path / "f", ["9.5", "10.5"]), root=tmp_path / "f" / "imgs", size=(8, 8),
        labels_are="names",
    )  # fmt: skip
    assert asked.classes == ("10.5", "9.5")
    given = di.from_csv(
        tmp_path / "f" / "l.csv", root=tmp_path / "f" / "imgs", size=(8, 8),
        classes=["9.5", "10.5"],
    )  # fmt: skip
    assert [given.classes[i] for i in given.labels] == ["9.5", "10.5"]
    # train labelled by indices has no class names: classes=train.classes names none
    train = di.from_csv(
        _label_csv(tmp_path / "i", ["0", "2", "1", "2"]), root=tmp_path / "i" / "imgs", size=(8, 8)
    )
    assert train.classes == ()
    again = di.from_csv(
        tmp_path / "i" / "l.csv", root=tmp_path / "i" / "imgs", size=(8, 8), classes=train.classes
    )
    assert again.labels.tolist() == [0, 2, 1, 2]


def test_from_csv_names_space_separated_labels_and_keeps_two_word_class_names(tmp_path, caplog):
    # Planet's tags: 'haze primary' beside 'haze' and 'primary' became a class of its own,
    # a class per combination, without a word
    import logging

    import pandas as pd

    labels = ["haze primary", "haze", "primary", "clear primary water", "clear", "water"]
    csv = _label_csv(tmp_path / "p", labels)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(csv, root=tmp_path / "p" / "imgs", size=(8, 8))
    said = "2 label(s) in column 'label' are other rows' labels joined by spaces"
    assert said in caplog.text and "'clear primary water' (line 5" in caplog.text
    assert [ds.classes[i] for i in ds.labels] == pd.read_csv(csv)["label"].tolist()  # as read
    caplog.clear()
    names = ["sea lion", "lion", "tiger cat", "tiger", "Egyptian cat"]  # ImageNet's names
    csv = _label_csv(tmp_path / "i", names)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(csv, root=tmp_path / "i" / "imgs", size=(8, 8))
    assert "joined by spaces" not in caplog.text
    assert [ds.classes[i] for i in ds.labels] == names


def test_from_csv_labels_that_are_the_same_letters_composed_differently_are_refused(tmp_path):
    # one class that prints alike twice: café typed on macOS (e + accent) beside café
    import unicodedata

    di.testing.make_image_folder(tmp_path / "imgs", n=3, size=(8, 8), classes=("a",))
    files = sorted(
        p.relative_to(tmp_path / "imgs").as_posix() for p in (tmp_path / "imgs").rglob("*.png")
    )
    composed, decomposed = (unicodedata.normalize(f, "café") for f in ("NFC", "NFD"))
    assert composed != decomposed and len({composed, decomposed}) == 2  # the oracle
    labels = [composed, "tea", decomposed]
    rows = ["path,label"] + [f"{f},{v}" for f, v in zip(files, labels, strict=True)]
    (tmp_path / "mixed.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"'label' holds the labels .*line 2.*line 4.*composed"):
        di.from_csv(tmp_path / "mixed.csv", root=tmp_path / "imgs", size=(8, 8))
    one_way = ["path,label"] + [
        f"{f},{v}" for f, v in zip(files, [composed, "tea", composed], strict=True)
    ]
    (tmp_path / "train.csv").write_text("\n".join(one_way) + "\n", encoding="utf-8")
    train = di.from_csv(tmp_path / "train.csv", root=tmp_path / "imgs", size=(8, 8))
    assert train.classes == (composed, "tea") and train.labels.tolist() == [0, 1, 0]
    valid = ["path,label", f"{files[0]},{decomposed}"]
    (tmp_path / "valid.csv").write_text("\n".join(valid) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not one of the classes given.*composed differently"):
        di.from_csv(
            tmp_path / "valid.csv", root=tmp_path / "imgs", size=(8, 8), classes=train.classes
        )
    # classes= given with two names that print alike: composed differently, or apart by an
    # invisible character or a space (a label would match one of them only by luck)
    for twins in ([composed, decomposed], [composed, composed + "\u200b"], ["tea", "tea "]):
        with pytest.raises(ValueError, match=r"classes has two names that print alike"):
            di.from_csv(tmp_path / "train.csv", root=tmp_path / "imgs", size=(8, 8), classes=twins)
        with pytest.raises(ValueError, match=r"classes has two names that print alike"):
            di.from_folder(tmp_path / "imgs", size=(8, 8), classes=twins)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        # an unquoted comma in a label: 'tabby' a class, ' cat' dropped
        ("{0},persian\n{1},tabby, cat\n", r"line 3: 3 value\(s\) for 2 column\(s\).*double quotes"),
        ("{0},persian,,\n{1},tabby,x\n", r"line 3: 3 value\(s\) for 2 column\(s\)"),
    ],
    ids=["extra-cell", "extra-value-after-empty-ones"],
)
def test_from_csv_rows_that_do_not_match_the_header_are_refused(
    image_folder, tmp_path, body, match
):
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    csv = tmp_path / "rows.csv"
    csv.write_text("path,label\n" + body.format(*files))
    with pytest.raises(ValueError, match=match):
        di.from_csv(csv, root=image_folder, size=(8, 8))


def test_from_csv_quotes_never_closed_and_long_values(image_folder, tmp_path):
    import csv as pycsv

    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    lines = [f"{f},{'cat' if i % 2 else 'dog'},ok" for i, f in enumerate(files[:4])]
    # a caption opening a quote never closed took every later row into it: 1 sample of 4,
    # unsaid (csv's strict mode, as pandas, refuses the file: the oracle)
    unclosed = "path,label,caption\n" + lines[0].replace(",ok", ',"Best shot') + "\n"
    unclosed += "\n".join(lines[1:]) + "\n"
    with pytest.raises(pycsv.Error):
        list(pycsv.reader(unclosed.splitlines(keepends=True), strict=True))
    (tmp_path / "open.csv").write_text(unclosed)
    with pytest.raises(
        ValueError, match=r"open\.csv, line 2: a value opens a double quote that is never closed"
    ):
        di.from_csv(tmp_path / "open.csv", root=image_folder, size=(8, 8))
    # closed again by the next row's quote: the rows run together, refused by their count
    (tmp_path / "next.csv").write_text(unclosed.replace(f"{files[2]},", f'{files[2]},"', 1))
    with pytest.raises(
        ValueError, match=r"next\.csv, line \d: 4 value\(s\) for 3 column\(s\).*Best shot"
    ):
        di.from_csv(tmp_path / "next.csv", root=image_folder, size=(8, 8))
    # a value longer than csv's 131,072 characters (a run-length mask): csv's bare error
    rle = " ".join(map(str, range(30_000)))
    (tmp_path / "rle.csv").write_text(f"path,label,rle,n\n{files[0]},a,{rle},1\n{files[1]},b,,2\n")
    ds = di.from_csv(tmp_path / "rle.csv", root=image_folder, size=(8, 8))
    assert ds.paths.tolist() == files[:2] and ds.columns["n"].tolist() == [1, 2]
    assert pycsv.field_size_limit() == 131_072  # set back
    # spaces after a closing quote (a hand-edited file) are read as pandas reads them
    # (csv's strict mode refused them)
    spaced = f'path,label\n"{files[0]}" ,"cat" \n"{files[1]}" ,"dog" \n'
    (tmp_path / "spaced.csv").write_text(spaced)
    ds = di.from_csv(tmp_path / "spaced.csv", root=image_folder, size=(8, 8))
    assert ds.paths.tolist() == files[:2] and ds.classes == ("cat", "dog")
    # a box named "images" was met with the images' shape, not as a reserved name
    (tmp_path / "box.csv").write_text(f"path,label,x0,y0,x1,y1\n{files[0]},a,1,1,4,4\n")
    with pytest.raises(ValueError, match=r"boxes names \['images'\] are reserved"):
        di.from_csv(
            tmp_path / "box.csv",
            root=image_folder,
            size=(8, 8),
            boxes={"images": ["x0", "y0", "x1", "y1"]},
        )


def test_from_csv_reads_trailing_empty_cells_and_columns_as_before(image_folder, tmp_path):
    # (review) Excel writes "path,label,," and "a.png,cat,,"; short rows leave trailing
    # empty values out: read as they were
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    csv = tmp_path / "excel.csv"
    csv.write_text(f"path,label,,\n{files[0]},cat,,\n{files[1]},dog,\n{files[2]},cat\n")
    ds = di.from_csv(csv, root=image_folder, size=(8, 8))
    assert ds.paths.tolist() == files[:3] and ds.labels.tolist() == [0, 1, 0]


def test_from_csv_a_column_named_twice_and_a_file_not_in_utf8_are_refused(image_folder, tmp_path):
    f = sorted(image_folder.rglob("*.png"))[0].relative_to(image_folder).as_posix()
    csv = tmp_path / "twice.csv"
    csv.write_text(f"path,label,label\n{f},cat,dog\n")  # the last 'label' won
    with pytest.raises(ValueError, match=r"names the column\(s\) 'label' more than once"):
        di.from_csv(csv, root=image_folder, size=(8, 8))
    csv.write_bytes(f"path,label\n{f},caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"twice\.csv: not UTF-8 text"):
        di.from_csv(csv, root=image_folder, size=(8, 8))


def test_from_csv_negative_labels_are_not_taken_for_no_label(image_folder, tmp_path):
    # SVM-style -1/1 labels: every -1 became "no label" without a word
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    csv = tmp_path / "svm.csv"
    csv.write_text(
        "path,label\n" + "".join(f"{p},{1 if i % 2 else -1}\n" for i, p in enumerate(files[:6]))
    )
    with pytest.raises(
        ValueError, match=r"line 2: label '-1' is not a class index.*labels_are='names'"
    ):
        di.from_csv(csv, root=image_folder, size=(8, 8))
    ds = di.from_csv(csv, root=image_folder, size=(8, 8), labels_are="names")
    assert ds.classes == ("-1", "1") and ds.labels.tolist() == [0, 1, 0, 1, 0, 1]
    # with the classes given, -1 is "no label", as documented
    ds = di.from_csv(csv, root=image_folder, size=(8, 8), classes=["neg", "pos"])
    assert ds.labels.tolist() == [-1, 1, -1, 1, -1, 1]


def test_from_csv_says_why_a_column_of_mostly_numbers_is_not_stored(image_folder, tmp_path, caplog):
    # a column of ages with one empty cell was left out of the store without a word
    import logging

    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    csv = tmp_path / "ages.csv"
    csv.write_text("path,label,age,weight\n" + "".join(
        f"{p},cat,{'unknown' if i == 2 else 3 + i},{1.5 * i}\n" for i, p in enumerate(files[:4])
    ))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(csv, root=image_folder, size=(8, 8))
    assert "weight" in ds.columns and "age" not in ds.columns
    assert (
        "column 'age' is not stored: 1 of its 4 values are not numbers (line 4: 'unknown')"
        in caplog.text
    )
    for missing in ("nan", ""):  # filled in, or empty as pandas writes a missing value: NaN
        csv.write_text(csv.read_text().replace(",unknown,", f",{missing},").replace(",nan,", ",,"))
        ds = di.from_csv(csv, root=image_folder, size=(8, 8))
        np.testing.assert_array_equal(np.asarray(ds.columns["age"]), [3, 4, np.nan, 6])


def test_from_csv_keeps_numbers_as_written(image_folder, tmp_path):
    # oracle: Python's float of each cell as written
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    cells = {
        "t": [
            "1700000000.5",
            "1700000063.5",
            "1700000100",
            "1700000127.25",
        ],  # float32: 128 s steps
        "id": ["100000001", "100000002", "", "123456789"],  # an ID column with a gap
        "x": ["0.1", "0.25", "1e-3", "-2"],  # float32 spells each as written
        "sep": ["1_2", "12", "3", "4"],  # Python reads "1_2" as 12: not a number here
    }
    csv = tmp_path / "m.csv"
    csv.write_text(
        "path,label," + ",".join(cells) + "\n"
        + "".join(f"{p},cat," + ",".join(c[i] for c in cells.values()) + "\n"
                  for i, p in enumerate(files[:4]))
    )  # fmt: skip
    ds = di.from_csv(csv, root=image_folder, size=(8, 8))
    assert "sep" not in ds.columns
    for name in ("t", "id", "x"):
        expected = [float(v) if v else np.nan for v in cells[name]]
        got = np.asarray(ds.columns[name])
        assert got.dtype == (np.float32 if name == "x" else np.float64), name
        if name == "x":
            assert [float(str(v)) for v in got] == expected
        else:
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match=r"line 2: column 'sep' holds '1_2', not a number"):
        di.from_csv(csv, root=image_folder, size=(8, 8), columns={"sep": "sep"})
    d = tmp_path / "store.zarr.zip"
    di.to_zarr(ds, d)
    back = di.open_zarr(d)
    order = {str(p): i for i, p in enumerate(ds.paths)}
    rows = [order[str(p)] for p in back.paths]
    for name in ("t", "id"):
        np.testing.assert_array_equal(
            np.asarray(back.columns[name]), np.asarray(ds.columns[name])[rows]
        )


def test_names_and_shapes_the_store_cannot_keep_are_refused_when_the_set_is_made(
    image_folder, tmp_path, caplog
):
    images = np.zeros((4, 6, 6, 3), np.uint8)
    for name in ("size/mm", "..", "", "__meta"):
        with pytest.raises(ValueError, match="cannot name an array in the store"):
            di.ImageSet(images, columns={name: np.zeros(4)})
    for name in ("index", "ok"):  # the feed's store index; the decode check
        with pytest.raises(ValueError, match=rf"\['{name}'\] are reserved"):
            di.ImageSet(images, columns={name: np.zeros(4)})
    with pytest.raises(ValueError, match=r"'masks' is the images' segmentation masks.*\(4,\)"):
        di.ImageSet(images, columns={"masks": np.zeros(4)})
    di.ImageSet(images, columns={"masks": np.zeros((4, 6, 6), np.uint8)})  # masks: fine
    with pytest.raises(ValueError, match=r"one class index per sample.*\(4, 3\)"):
        di.ImageSet(images, np.eye(4, 3, dtype=np.int64))  # multi-hot
    with pytest.raises(ValueError, match="the string 'cat'"):
        di.ImageSet(images, np.zeros(4, np.int64), classes="cat")
    # a CSV column named so is refused when read, and columns= renames it
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    csv = tmp_path / "l.csv"
    csv.write_text(
        "path,label,size/mm\n" + "".join(f"{p},cat,{i}\n" for i, p in enumerate(files[:3]))
    )
    with pytest.raises(ValueError, match=r"'size/mm' cannot name.*columns=\{'new_name'"):
        di.from_csv(csv, root=image_folder, size=(8, 8), columns={"size/mm": "size/mm"})
    ds = di.from_csv(csv, root=image_folder, size=(8, 8), columns={"size_mm": "size/mm"})
    np.testing.assert_array_equal(np.asarray(ds.columns["size_mm"]), [0, 1, 2])
    # picked by default (pandas' reset_index() writes an 'index' column): left out, and said
    csv.write_text(csv.read_text().replace("size/mm", "index"))
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(csv, root=image_folder, size=(8, 8))
    assert "index" not in ds.columns
    assert "column 'index' is not stored: the name is reserved" in caplog.text


def test_from_csv_names_the_separator_the_letter_case_and_columns_it_leaves_out(
    image_folder, tmp_path, caplog
):
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    csv = tmp_path / "l.csv"

    def read(text, **kw):
        csv.write_text(text)
        return di.from_csv(csv, root=image_folder, size=(8, 8), **kw)

    # ';'-separated with a decimal comma: the row had "2 values for 1 column" and a hint
    # on quoting, where the header shows the separator
    with pytest.raises(ValueError, match=r"line 2: 2 value\(s\).*seems separated by ';'"):
        read(f"path;label;score\n{files[0]};cat;1,5\n")
    with pytest.raises(ValueError, match=r"'Path' differs from it in letter case"):
        read(f"Path,Label\n{files[0]},cat\n")
    with pytest.raises(ValueError, match=r"names with spaces around them, such as 'path '"):
        read(f"path ,label\n{files[0]},cat\n")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = read(f"path,label,,source_size\n{files[0]},cat,1.5,3\n{files[1]},dog,2,4\n")
    # an unnamed column of values, and one named as a derived array: left out, and said
    assert "column 3 has no name in the header but holds values (line 2: '1.5')" in caplog.text
    assert "column 'source_size' is not stored: the name is reserved" in caplog.text
    from PIL import Image

    sizes = [Image.open(image_folder / f).size[::-1] for f in files[:2]]  # oracle: Pillow
    np.testing.assert_array_equal(ds.columns["source_size"].compute(), sizes)


def test_a_store_with_a_column_named_as_now_reserved_still_opens(tmp_path, monkeypatch):
    # stores written before 'index' was reserved (a CSV column) open and split as before
    import daskimg.read.imageset as imageset_module

    images = np.arange(4 * 6 * 6 * 3, dtype=np.uint8).reshape(4, 6, 6, 3)
    old = di.ImageSet(images, columns={"index": np.arange(4.0) * 10}, check_names=False)
    with monkeypatch.context() as m:  # written as an earlier version did
        m.setattr(imageset_module, "RESERVED", ("images", "labels", "paths"))
        di.to_zarr(old, tmp_path / "old.zarr.zip", order="source")
    with pytest.raises(ValueError, match=r"\['index'\] are reserved"):  # not written again
        di.to_zarr(old, tmp_path / "again.zarr.zip")
    ds = di.open_zarr(tmp_path / "old.zarr.zip")
    np.testing.assert_array_equal(np.asarray(ds.columns["index"]), np.arange(4.0) * 10)
    part = ds.take([2, 3])
    np.testing.assert_array_equal(np.asarray(part.columns["index"]), [20.0, 30.0])


def test_from_csv_errors_say_what_is_wrong_with_the_file(image_folder, tmp_path):
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    rows = "".join(f"{p};cat\n" for p in files[:2])
    cases = {
        "semi.csv": ("path;label\n" + rows, "separated by ';'"),
        "tabs.csv": ("path\tlabel\n" + rows.replace(";", "\t"), "separated by tabs"),
        "excel.csv": ("sep=,\npath,label\n" + rows.replace(";", ","), "Excel's separator hint"),
        "bare.csv": (rows.replace(";", ","), "needs a header row"),
    }
    for name, (text, said) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=re.escape(said)):
            di.from_csv(tmp_path / name, root=image_folder, size=(8, 8))
    (tmp_path / "u16.csv").write_bytes(("path,label\n" + rows).encode("utf-16"))
    with pytest.raises(ValueError, match="UTF-16"):
        di.from_csv(tmp_path / "u16.csv", root=image_folder, size=(8, 8))


def test_a_missing_file_names_its_near_namesake(tmp_path):
    from PIL import Image

    Image.new("L", (4, 4)).save(tmp_path / "A.png")
    Image.new("L", (4, 4)).save(tmp_path / unicodedata.normalize("NFD", "é.png"))
    (tmp_path / "sub").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "sub" / "b.png")
    rows = ["a.png", unicodedata.normalize("NFC", "é.png"), "sub\\b.png"]
    said = ["'A.png', which differs only in letter case", "Unicode normalisation", "with '/'"]
    for row, hint in zip(rows, said, strict=True):  # a block raises its first bad file
        (tmp_path / "l.csv").write_text(f"path,label\n{row},x\n")
        ds = di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(4, 4))
        with pytest.raises(DecodeError, match=re.escape(hint)), dask.config.set(scheduler="sync"):
            ds.images.compute()


def test_from_csv_stores_true_false_columns_and_names_the_text_ones(image_folder, tmp_path, caplog):
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    flags = ["True", "false", "TRUE", "False"]
    csv = tmp_path / "l.csv"
    csv.write_text(
        "path,label,occluded,notes\n"
        + "".join(
            f"{p},cat,{f},seen {i}\n" for i, (p, f) in enumerate(zip(files[:4], flags, strict=True))
        )
    )
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(csv, root=image_folder, size=(8, 8))
    assert "text column(s) 'notes' not stored" in caplog.text
    expected = {p: f.lower() == "true" for p, f in zip(files[:4], flags, strict=True)}
    got = dict(zip(map(str, ds.paths), np.asarray(ds.columns["occluded"]).tolist(), strict=True))
    assert got == expected and np.asarray(ds.columns["occluded"]).dtype == bool
    di.to_zarr(ds, tmp_path / "s.zarr.zip")
    back = di.open_zarr(tmp_path / "s.zarr.zip")
    assert (
        dict(zip(map(str, back.paths), np.asarray(back.columns["occluded"]).tolist(), strict=True))
        == expected
    )
    # named in columns=, the same column reads the same (it was refused as "not a number")
    asked = di.from_csv(csv, root=image_folder, size=(8, 8), columns={"occ": "occluded"})
    assert asked.columns["occ"].dtype == bool
    assert dict(zip(map(str, asked.paths), asked.columns["occ"].tolist(), strict=True)) == expected
    both = di.from_csv(
        csv, root=image_folder, size=(8, 8), columns={"two": ["occluded", "occluded"]}
    )
    assert both.columns["two"].dtype == bool and both.columns["two"].shape == (4, 2)
    with pytest.raises(ValueError, match=r"line 2: column 'notes' holds 'seen 0', not a number"):
        di.from_csv(csv, root=image_folder, size=(8, 8), columns={"x": ["occluded", "notes"]})
    (tmp_path / "mix.csv").write_text(
        "path,label,a,b\n"
        + "".join(f"{p},cat,1,{f}\n" for p, f in zip(files[:4], flags, strict=True))
    )
    with pytest.raises(ValueError, match=r"line 2: column 'b' holds 'True', true/false beside"):
        di.from_csv(tmp_path / "mix.csv", root=image_folder, size=(8, 8), columns={"x": ["a", "b"]})


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_arrays_put_in_place_of_the_files_own_are_kept(image_folder, tmp_path, on_error):
    # take/split/to_zarr rebuilt images and source_size from the files: a flip the user
    # made (and the column changed to match it) was silently undone
    import zarr

    ds = di.from_folder(image_folder, size=(16, 20), on_error=on_error)
    by_path = {str(p): i for i, p in enumerate(ds.paths)}
    sizes = np.asarray(ds.columns["source_size"]) + 1000  # the oracle: numpy
    ds.columns["source_size"] = ds.columns["source_size"] + 1000
    for part in (ds.take(np.arange(len(ds))[::-1]), *ds.split({"a": 0.5, "b": 0.5}).values()):
        rows = [by_path[str(p)] for p in part.paths]
        np.testing.assert_array_equal(np.asarray(part.columns["source_size"]), sizes[rows])
    pixels = np.asarray(ds.images)[:, :, ::-1]
    ds.images = ds.images[:, :, ::-1]
    out = tmp_path / "s.zarr.zip"
    if on_error == "skip":
        with pytest.raises(ValueError, match=r"skip.*images.* were replaced"):
            di.to_zarr(ds, out)
        return
    for part in (ds.take(np.arange(len(ds))[::-1]), *ds.split({"a": 0.5, "b": 0.5}).values()):
        rows = [by_path[str(p)] for p in part.paths]
        np.testing.assert_array_equal(np.asarray(part.images), pixels[rows])
    di.to_zarr(ds, out)  # shuffled: a take of every row
    stored = zarr.open_group(zarr.storage.ZipStore(out, mode="r"), mode="r")
    rows = [by_path[str(p)] for p in stored["paths"][:]]
    np.testing.assert_array_equal(stored["images"][:], pixels[rows])
    np.testing.assert_array_equal(stored["source_size"][:], sizes[rows])


def test_a_column_added_later_is_checked_when_stored(tmp_path, image_folder):
    ds = di.ImageSet(np.zeros((3, 4, 4, 3), np.uint8))
    ds.columns["size/mm"] = np.zeros(3)
    with pytest.raises(ValueError, match="'size/mm' cannot name an array"):
        di.to_zarr(ds, tmp_path / "s.zarr.zip")
    # a skip set whose lazy derived column was replaced is refused (it would decode unskipped)
    files = di.from_folder(image_folder, size=(8, 8), on_error="skip")
    files.columns["source_size"] = files.columns["source_size"] + 0
    with pytest.raises(ValueError, match="'source_size' were replaced"):
        di.to_zarr(files, tmp_path / "t.zarr.zip")


def test_from_csv_codes_with_leading_zeros_are_not_stored_as_numbers(tmp_path, caplog):
    # a ZIP code column '02134' was stored as 2134.0; labels spelled so were names already
    import pandas as pd

    csv = _label_csv(tmp_path, ["a", "b", "a"])
    table = pd.read_csv(csv, dtype=str)  # the oracle: the cells as written
    table["zip"] = ["02134", "90210", "00501"]
    table["n"] = ["0", "0.5", "12"]
    table.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(csv, root=tmp_path / "imgs", size=(8, 8))
    assert "zip" not in ds.columns and "column 'zip' is not stored" in caplog.text
    assert "'02134'" in caplog.text
    np.testing.assert_array_equal(np.asarray(ds.columns["n"]), table["n"].astype(float))
    asked = di.from_csv(csv, root=tmp_path / "imgs", size=(8, 8), columns={"zip": "zip"})
    np.testing.assert_array_equal(np.asarray(asked.columns["zip"]), [2134, 90210, 501])


def test_from_csv_a_path_through_a_link_and_then_dotdot_is_refused(tmp_path):
    # 'link/../x.png' was read as root/x.png; the system (open, Pillow) reads the file
    # beside the link's target
    from PIL import Image

    imgs = tmp_path / "imgs"
    (imgs / "other" / "deep").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(imgs / "x.png")
    Image.new("RGB", (8, 8), (0, 0, 200)).save(imgs / "other" / "x.png")
    (imgs / "link").symlink_to(imgs / "other" / "deep")
    with Image.open(imgs / "link" / ".." / "x.png") as im:  # the oracle: what the system reads
        assert im.getpixel((0, 0)) == (0, 0, 200)
    (tmp_path / "t.csv").write_text("path,label\nlink/../x.png,a\n")
    with pytest.raises(ValueError, match=r"line 2: path 'link/../x.png' goes through a link"):
        di.from_csv(tmp_path / "t.csv", root=imgs, size=(8, 8))
    (imgs / "sub").mkdir()  # '..' after a plain folder reads what the text names
    (tmp_path / "t.csv").write_text("path,label\nsub/../x.png,a\n")
    ds = di.from_csv(tmp_path / "t.csv", root=imgs, size=(8, 8))
    assert ds.images[0, 0, 0].compute().tolist() == [200, 0, 0]


def test_a_stratified_split_far_from_its_fractions_is_named(caplog):
    # 500 classes of 4: 0.9/0.05/0.05 came out 0.5/0.25/0.25 without a word
    images = np.zeros((2000, 2, 2, 1), np.uint8)
    labels = np.repeat(np.arange(500), 4)
    ds = di.ImageSet(images, labels, classes=[f"c{i}" for i in range(500)])
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        parts = ds.split({"train": 0.9, "valid": 0.05, "test": 0.05})
    shares = {k: len(v) / len(ds) for k, v in parts.items()}  # the oracle: the counts
    assert shares["valid"] > 0.05 * 1.25
    assert "far from the fractions asked" in caplog.text and "'valid' 25.0%" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        parts = ds.split({"train": 0.9, "valid": 0.05, "test": 0.05}, stratify=False)
    assert "far from" not in caplog.text
    assert {k: len(v) for k, v in parts.items()} == {"train": 1800, "valid": 100, "test": 100}


def test_a_label_off_a_given_class_by_an_invisible_character_is_named_so(tmp_path):
    csv = _label_csv(tmp_path, ["cat\u200b", "dog"])
    with pytest.raises(
        ValueError,
        match=r"label 'cat.u200b' is not one of the classes given.*'cat.u200b' is 'cat' there, "
        r"the same apart from invisible characters",
    ):
        di.from_csv(csv, root=tmp_path / "imgs", size=(8, 8), classes=["cat", "dog"])


@pytest.mark.parametrize("columns", [None, {"ids": "image_id"}])
@pytest.mark.parametrize("beside", ["", "nan", "0.5"])
def test_from_csv_ids_floats_would_round_are_refused_not_merged(tmp_path, columns, beside):
    # an ID column with an empty cell (or a fraction) is floats, and float64 rounded
    # 9007199254740995 and 9007199254740996 to one number, without a word
    ids = [2**53 + 3, 2**53 + 4]
    assert float(ids[0]) == float(ids[1])  # the oracle: float64 cannot tell them apart
    csv_path = _csv_with_column(tmp_path, [*map(str, ids), beside])
    with pytest.raises(ValueError, match=rf"line 2: column 'image_id' holds {ids[0]}.*2\*\*53"):
        di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8), columns=columns)


def test_from_csv_ids_within_float64_beside_an_empty_cell_are_kept(tmp_path):
    ids = [2**53, 2**40 + 1]
    csv_path = _csv_with_column(tmp_path, [*map(str, ids), ""])
    got = di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8)).columns["image_id"]
    assert got.dtype == np.float64 and [int(v) for v in got[:2]] == ids and np.isnan(got[2])


def test_from_csv_a_number_beyond_float64_is_refused_not_made_infinity(tmp_path):
    csv_path = _csv_with_column(tmp_path, ["1.5", "1e400"], name="area")
    assert float("1e400") == float("inf")  # the oracle: Python's own parse overflows
    with pytest.raises(ValueError, match=r"line 3: column 'area' holds 1e400, beyond the range"):
        di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8))
    csv_path = _csv_with_column(tmp_path, ["1.5", "-inf"], name="area")  # written as such: kept
    got = di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8)).columns["area"]
    assert got[0] == 1.5 and got[1] == -np.inf
    with pytest.raises(ValueError, match=r"columns=\{'extra': \[\]\} names no CSV column"):
        di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8), columns={"extra": []})


def test_from_csv_a_header_repeated_where_two_csvs_were_joined_is_refused(image_folder, tmp_path):
    # `cat a.csv b.csv`: the second header was a sample and 'label' a class, so with
    # on_error="skip" every real class index moved up by one
    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    csv = tmp_path / "joined.csv"
    csv.write_text(f"path,label\n{files[0]},cat\n\ufeffpath, label\n{files[1]},dog\n")
    for on_error in ("raise", "skip"):
        with pytest.raises(ValueError, match=r"joined\.csv, line 3: the header again"):
            di.from_csv(csv, root=image_folder, size=(8, 8), on_error=on_error)


def test_from_csv_a_file_whose_name_ends_in_a_space_is_read_as_named(tmp_path):
    # 'a.png ' was read as 'a.png', another file: the cell's spaces were stripped
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "a.png ", "b.png"):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(root / name, "PNG")
    (tmp_path / "l.csv").write_text('path,label\n"a.png ",x\n b.png ,y\n')
    ds = di.from_csv(tmp_path / "l.csv", root=root, size=(8, 8))
    assert ds.paths.tolist() == ["a.png ", "b.png"]  # b.png: spaces around a name, stripped
    for path, got in zip(ds.paths, ds.images.compute(), strict=True):
        np.testing.assert_array_equal(got, _pillow_rgb(root / path))


def test_a_class_whose_every_file_is_skipped_is_named(tmp_path, caplog):
    di.testing.make_image_folder(tmp_path / "imgs", n=4, size=(8, 8), classes=("a", "b"))
    for f in (tmp_path / "imgs" / "b").iterdir():
        f.write_bytes(b"not an image")
    ds = di.from_folder(tmp_path / "imgs", size=(8, 8), on_error="skip")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.to_zarr(ds, tmp_path / "s.zarr.zip")
    assert "every file of class(es) 'b' failed to decode" in caplog.text
    assert di.open_zarr(tmp_path / "s.zarr.zip").classes == ("a", "b")  # indices kept


@pytest.mark.parametrize("name", ["zarr.json", "ZARR.JSON", "x" * 201, "é" * 101])
def test_column_names_a_store_cannot_hold_are_refused_up_front(tmp_path, name):
    # 'zarr.json' was hidden from plain zarr in a zip, and failed a folder store's write
    # after all the decoding with a bare FileExistsError; a long name with ENAMETOOLONG
    with pytest.raises(ValueError, match="cannot name an array in the store"):
        di.ImageSet(np.zeros((2, 4, 4, 3), np.uint8), columns={name: np.arange(2)})
    with pytest.raises(ValueError, match=r"cannot name an array|must be letters|metadata files"):
        di.ArrayWriter(tmp_path / "w.zarr", name=name, shape=(), dtype="int64")


def test_from_csv_header_mistakes_are_named(image_folder, tmp_path):
    f = sorted(image_folder.rglob("*.png"))[0].relative_to(image_folder).as_posix()
    csv = tmp_path / "h.csv"
    csv.write_text(f"path, label\n{f},cat\n")  # a space after the comma: column ' label'
    with pytest.raises(ValueError, match=r"spaces around them, such as ' label'.*path,label"):
        di.from_csv(csv, root=image_folder, size=(8, 8))
    csv.write_text(f"sep=,\npath,label\n{f},cat\n")  # Excel's separator line first
    with pytest.raises(ValueError, match=r"h\.csv: the header is missing.*separator hint"):
        di.from_csv(csv, root=image_folder, size=(8, 8))


def test_from_csv_floats_spelled_as_python_writes_them_are_kept_beyond_2_53(tmp_path):
    # (review) pandas writes a float64 column with a NaN by repr: "1.6859000001234568e+18"
    # (a timestamp in ns) is that float exactly, and was refused as an ID floats round
    values = ["1.6859000001234568e+18", "3400000000000000000000000000000000000000", ""]
    csv_path = _csv_with_column(tmp_path, values, name="t")
    got = di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8)).columns["t"]
    assert got[0] == float(values[0]) and got[1] == float(values[1]) and np.isnan(got[2])


def test_classes_none_means_no_class_names(tmp_path):
    # tuple(None) failed: "TypeError: 'NoneType' object is not iterable"
    images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    ds = di.ImageSet(images, None, classes=None)
    assert ds.classes == () and ds.labels is None
    labelled = di.ImageSet(images, [0, 1, 1, 0], classes=None)
    out = di.to_zarr(labelled, tmp_path / "s.zarr.zip", order="source")
    back = di.open_zarr(out)
    assert back.classes == () and back.labels.tolist() == [0, 1, 1, 0]
    np.testing.assert_array_equal(back.images.compute(), images)  # oracle: numpy


def test_from_csv_a_true_false_column_with_an_empty_cell_is_named_as_such(tmp_path):
    # the message said "true/false beside numbers", but the odd cell was empty
    csv_path = _csv_with_column(tmp_path, ["True", "false", ""], name="f")
    with pytest.raises(ValueError, match=r"line 4: column 'f' is true/false with an empty cell"):
        di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8), columns={"f": "f"})


def test_from_csv_a_true_false_column_with_an_empty_cell_is_left_out_as_such(tmp_path, caplog):
    # columns picked by default: it was named among the text columns ("only numbers and
    # true/false are stored"), though it is true/false
    import logging

    csv_path = _csv_with_column(tmp_path, ["True", "false", ""], name="f")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(csv_path, root=tmp_path / "imgs", size=(8, 8))
    assert "f" not in ds.columns
    said = [r.getMessage() for r in caplog.records]
    assert any("column 'f' is not stored: it is true/false with an empty cell (line 4)" in m
               for m in said), said  # fmt: skip
    assert not any("text column" in m for m in said), said


def test_take_split_and_to_zarr_refuse_what_would_land_on_other_samples(tmp_path, caplog):
    # take([0.5, 1.7]) gave samples 0 and 1, take(["1"]) sample 1; a column of the whole set
    # put on a split was stored cut short, each row on another sample
    import logging

    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    ds = di.ImageSet(images, np.arange(10) % 2, classes=["a", "b"])
    for bad in ([0.5, 1.7], ["1", "2"], [1, None]):
        with pytest.raises(IndexError, match="indices must be whole numbers"):
            ds.take(bad)
    part = ds.take(np.arange(4))
    part.columns["pred"] = np.arange(10.0)  # the whole set's
    with pytest.raises(ValueError, match=r"'pred' has 10 rows for a set of 4 samples"):
        di.to_zarr(part, tmp_path / "p.zarr.zip")
    assert not (tmp_path / "p.zarr.zip").exists()
    for fractions, said in (([0.8, 0.2], "fractions must map split names"),):
        with pytest.raises(TypeError, match=said):
            ds.split(fractions)
    with pytest.raises(TypeError, match="stratify must be True or False"):
        ds.split({"a": 0.5, "b": 0.5}, stratify=ds.labels)
    for seed in (1.5, True):
        with pytest.raises(TypeError, match="seed must be"):
            ds.split({"a": 0.5, "b": 0.5}, seed=seed)
    # (review) scikit-learn's stratify=None and numpy's own seeds stay taken
    plain = ds.split({"a": 0.5, "b": 0.5}, stratify=False, seed=3)
    none = ds.split({"a": 0.5, "b": 0.5}, stratify=None, seed=np.int64(3))
    assert all((plain[k].images == none[k].images).all() for k in plain)
    ds.split({"a": 0.5, "b": 0.5}, seed=np.random.SeedSequence(1))
    # unlabelled samples and repeated files are divided with the rest, and said
    mixed = di.ImageSet(images, np.array([0, 1, -1, 0, 1, -1, 0, 1, 0, 1]), classes=["a", "b"])
    twice = di.ImageSet(images[:4], np.array([0, 1, 0, 1]), classes=["a", "b"], paths=list("xxyz"))
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        mixed.split({"a": 0.5, "b": 0.5})
        twice.split({"a": 0.5, "b": 0.5})
    assert "2 samples have no label (-1)" in caplog.text
    assert "1 samples are in the set more than once" in caplog.text


def test_classes_and_paths_put_in_after_are_checked_as_given_at_first(tmp_path, caplog):
    import logging

    import matplotlib

    matplotlib.use("Agg")
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[:] = np.arange(4)[:, None, None, None]
    ds = di.ImageSet(images, np.array([0, 1, 0, 1]), classes=["cat", "dog"])
    # ds.classes = "cat" was stored as the classes 'c', 'a', 't' (order="source"); a name
    # given twice made a store that then would not open ("damaged")
    with pytest.raises(ValueError, match=r"got the string 'cat'.*one per letter"):
        ds.classes = "cat"
    with pytest.raises(ValueError, match=r"classes name 'cat' more than once"):
        ds.classes = ["cat", "cat"]
    assert ds.classes == ("cat", "dog")
    ds.classes = np.array(["cat", "dog"])  # np.unique's: "truth value ... ambiguous" later
    assert ds.classes == ("cat", "dog")
    p = di.to_zarr(ds, tmp_path / "a.zarr.zip", order="source")
    assert plain_group(p).attrs["daskimg"]["classes"] == ["cat", "dog"]
    ds.classes = [0, 1]  # repr and the feed failed on the ints
    assert ds.classes == ("0", "1") and "0" in repr(ds)
    ds.classes = None
    assert ds.classes == ()
    # paths: a list failed in take with "'list' object has no attribute 'ndim'", numbers
    # were stored as float64 paths, a dask array broke split
    ds = di.ImageSet(images, np.array([0, 1, 0, 1]), classes=["cat", "dog"])
    ds.paths = ["a.png", "b.png", "c.png", "d.png"]
    assert ds.take([3, 0]).paths.tolist() == ["d.png", "a.png"]
    ds.paths = dask.array.from_array(np.array(["a", "b", "c", "d"], object), chunks=2)
    assert isinstance(ds.paths, np.ndarray) and ds.paths.tolist() == list("abcd")
    ds.split({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match=r"paths must have 4 rows"):
        ds.paths = ["a.png"]
    ds.paths = np.array([0.5, 1.5, 2.5, 3.5])
    with pytest.raises(ValueError, match=r"'paths', row 0 is float 0\.5, not text"):
        di.to_zarr(ds, tmp_path / "b.zarr.zip", order="source")
    # show drew a whole set's boxes (put on a subset) on other samples, and failed with
    # IndexError or ZeroDivisionError on labels beyond the classes or an empty set
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [2, 2, 4, 4], [3, 3, 5, 5]], float)
    full = di.ImageSet(
        images, np.array([0, 1, 0, 1]), classes=["a", "b"], columns={"bbox": boxes}, boxes=("bbox",)
    )
    part = full.take([2, 3])
    part.columns["bbox"] = boxes
    with pytest.raises(ValueError, match=r"array 'bbox' has 4 rows for a set of 2 samples"):
        part.show(n=2)
    with pytest.raises(ValueError, match=r"holds no samples: nothing to show"):
        full.take([]).show()
    with pytest.raises(ValueError, match=r"holds no samples: there is nothing to split"):
        full.take([]).split({"a": 0.5, "b": 0.5})
    # take with repeats, then split, without paths to compare: copies landed in both parts
    # unsaid (with paths it was said)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        full.take([0, 1, 2, 3, 0, 1]).split({"a": 0.5, "b": 0.5})
    assert "2 samples are in the set more than once" in caplog.text


def test_a_short_block_of_a_users_dask_array_is_refused_after_take_and_split(tmp_path):
    # a loader that drops an unreadable file returns 4 rows for a block declared as 5: to_zarr
    # refused it, but a take or split cut the array first, and the cut hid the short block
    # (rows 5, 7, 8 stored as 5, 8, 9 under 5, 7, 8's labels); the feed likewise
    def load(start: int, stop: int) -> np.ndarray:
        ids = [i for i in range(start, stop) if i != 6]
        return np.asarray(ids, np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)

    blocks = [
        dask.array.from_delayed(dask.delayed(load)(s, s + 5), (5, 4, 4, 3), np.uint8)
        for s in range(0, 20, 5)
    ]
    ds = di.ImageSet(dask.array.concatenate(blocks), np.arange(20) % 2, classes=["a", "b"])
    said = r"rows 5\.\.10 of its dask array computed to an array of shape \(4, 4, 4, 3\)"
    sub = ds.take([0, 5, 7, 8])
    with pytest.raises(ValueError, match=said):
        di.to_zarr(sub, tmp_path / "sub.zarr.zip")
    with pytest.raises(ValueError, match=said):
        list(di.BatchIterator(sub, batch_size=4, shuffle=False))
    for name, part in ds.split({"a": 0.5, "b": 0.5}, seed=0).items():
        with pytest.raises(ValueError, match=said):
            di.to_zarr(part, tmp_path / f"{name}.zarr.zip")
    # a column of the user's, the same
    good = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    col = dask.array.concatenate(
        [
            dask.array.from_delayed(dask.delayed(lambda s: np.arange(s, s + 4.0))(s), (5,), float)
            for s in range(0, 20, 5)
        ]
    )
    with_col = di.ImageSet(good, np.arange(20) % 2, classes=["a", "b"], columns={"score": col})
    with pytest.raises(ValueError, match=r"array 'score': rows 0\.\.5"):
        di.to_zarr(with_col.take([1, 2]), tmp_path / "col.zarr.zip")
    # whole blocks, as declared: taken and stored as numpy takes them
    fine = di.ImageSet(dask.array.from_array(good, chunks=5), np.arange(20) % 2, classes=["a", "b"])
    out = di.to_zarr(fine.take([0, 5, 7, 8]), tmp_path / "fine.zarr.zip", order="source")
    assert di.open_zarr(out).images[:, 0, 0, 0].compute().tolist() == [0, 5, 7, 8]


def test_columns_labels_and_indices_put_in_after_the_set_was_made_are_checked(tmp_path):
    # the constructor refused a column named labels, a float label, a masks column of
    # another size; put in afterwards they were stored (labels: the column's, silently)
    images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)

    def fresh() -> di.ImageSet:
        return di.ImageSet(
            images, np.arange(6) % 3, classes=list("abc"), paths=[f"f{i}" for i in range(6)]
        )

    for name in ("labels", "paths", "images"):
        ds = fresh()
        ds.columns[name] = np.zeros(6, np.int64)
        with pytest.raises(ValueError, match=rf"column names \['{name}'\] are reserved"):
            di.to_zarr(ds, tmp_path / "a.zarr.zip")
        with pytest.raises(ValueError, match="are reserved"):
            di.BatchIterator(ds, batch_size=2)
        with pytest.raises(ValueError, match="are reserved"):
            ds.arrays  # noqa: B018
    for name in ("index", "ok"):  # a store whose feed index could not be read
        ds = fresh()
        ds.columns[name] = np.arange(6)
        with pytest.raises(ValueError, match=rf"column names \['{name}'\] are reserved"):
            di.to_zarr(ds, tmp_path / "a.zarr.zip")
    assert not (tmp_path / "a.zarr.zip").exists()
    ds = fresh()
    ds.columns["masks"] = np.zeros((6, 3, 3), np.uint8)
    with pytest.raises(ValueError, match=r"'masks' is the images' segmentation masks"):
        di.to_zarr(ds, tmp_path / "a.zarr.zip")
    ds = fresh()
    ds.boxes = ("nope",)
    with pytest.raises(ValueError, match=r"boxes names 'nope'.*it is not a column"):
        di.to_zarr(ds, tmp_path / "a.zarr.zip")
    with pytest.raises(ValueError, match="boxes names 'nope'"):
        di.BatchIterator(ds, batch_size=2)
    # labels assigned are checked and cast as the constructor's (a float 1.0 was stored as
    # float64 and the store refused to open as "damaged")
    ds = fresh()
    with pytest.raises(ValueError, match=r"labels must be whole numbers.*0\.7"):
        ds.labels = np.array([0.7, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="labels must have 6 rows"):
        ds.labels = [0, 1]
    ds.labels = [2.0, 1.0, 0.0, 2.0, 1.0, 0.0]  # a list, whole floats: as ImageSet(labels=)
    assert ds.labels.dtype == np.int64
    out = di.to_zarr(ds, tmp_path / "b.zarr.zip", order="source")
    back = di.open_zarr(out)
    np.testing.assert_array_equal(back.labels, [2, 1, 0, 2, 1, 0])
    np.testing.assert_array_equal(back.images[:, 0, 0, 0].compute(), np.arange(6))
    ds.labels = [7, 0, 0, 0, 0, 0]  # beyond the 3 classes: was fed as it was
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2 for 3 classes"):
        di.BatchIterator(ds, batch_size=2)
    ds.labels = None
    assert ds.labels is None


def test_take_refuses_indices_beyond_the_set_of_any_integer_type():
    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    ds = di.ImageSet(images)
    # uint64 2**64 - 3 was cast to -3: the third sample from the end
    for bad in (np.array([2**64 - 3], np.uint64), [2**63 + 5], [2**70], [10], [-11]):
        with pytest.raises(IndexError, match=r"must lie in -10\.\.9 for a set of 10"):
            ds.take(bad)
    for good, want in ((np.array([9, 0], np.uint64), [9, 0]), ([-10, -1], [0, 9])):
        assert ds.take(good).images[:, 0, 0, 0].compute().tolist() == want
    with pytest.raises(IndexError, match="the set is empty"):
        ds.take([]).take([0])
    # whole numbers in an object array, in range: taken (they were refused as out of range)
    assert ds.take(np.array([0, 9], dtype=object)).images[:, 0, 0, 0].compute().tolist() == [0, 9]
    with pytest.raises(IndexError, match=r"must lie in -10\.\.9 .* got 1\.\.18446744073709551615"):
        ds.take([1, 2**64 - 1])


@given(
    n=st.integers(1, 30),
    block=st.integers(1, 30),
    cols=st.integers(1, 4),
    picks=st.lists(st.integers(-60, 60), max_size=25),
)
@settings(max_examples=60, deadline=None)
def test_take_of_a_users_dask_array_equals_numpys(n, block, cols, picks):
    # the rows are cut from only the blocks they lie in, each checked: the same as numpy
    x = np.arange(n * cols * 2, dtype=np.int32).reshape(n, cols, 2)
    ds = di.ImageSet(
        np.zeros((n, 2, 2, 1), np.uint8), columns={"x": dask.array.from_array(x, (block, 1, 2))}
    )
    idx = [p % (2 * n) - n for p in picks]  # in -n..n-1
    got = ds.take(idx).columns["x"]
    np.testing.assert_array_equal(got.compute(), x[idx])
    again = list(range(len(idx)))[::-2]  # a subset's subset
    np.testing.assert_array_equal(ds.take(idx).take(again).columns["x"].compute(), x[idx][again])


def test_a_set_changed_after_it_was_made_is_checked_by_take_and_split(tmp_path):
    # (second-wave review) a column of the whole set put on a split was cut to the split's
    # length by a further take or split and stored, each row on another sample
    images = np.arange(20, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    ds = di.ImageSet(images, np.arange(20) % 2, classes=["a", "b"])
    part = ds.take(np.arange(10))
    part.columns["feat"] = np.arange(20.0)
    for cut in (lambda s: s.take([0, 1]), lambda s: s.split({"a": 0.5, "b": 0.5})):
        with pytest.raises(ValueError, match=r"'feat' has 20 rows for a set of 10 samples"):
            cut(part)
    part = ds.take(np.arange(10))
    part.images = ds.images  # the whole set's images
    with pytest.raises(ValueError, match=r"'images' has 20 rows for a set of 10 samples"):
        part.take([0])
    # a column put in as a list is taken as the constructor takes one
    ok = ds.take(np.arange(4))
    ok.columns = {"score": [0.5, 1.5, 2.5, 3.5]}
    np.testing.assert_array_equal(ok.take([3, 0]).columns["score"], [3.5, 0.5])
    out = di.to_zarr(ok, tmp_path / "ok.zarr.zip", order="source")
    np.testing.assert_array_equal(di.open_zarr(out).columns["score"], [0.5, 1.5, 2.5, 3.5])
    # boxes named by one string: said so at once (it was read letter by letter)
    with pytest.raises(ValueError, match="boxes must be a sequence of column names"):
        di.ImageSet(images, columns={"bbox": np.zeros((20, 4))}, boxes="bbox")


def test_a_set_pickled_before_labels_were_checked_on_assignment_still_works(tmp_path):
    import pickle

    images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    ds = di.ImageSet(images, np.arange(6) % 2, classes=["a", "b"])
    state = dict(ds.__dict__)  # as an earlier version pickled it: "labels", no "exact_names"
    state["labels"] = state.pop("_labels")
    del state["exact_names"]
    old = di.ImageSet.__new__(di.ImageSet)
    old.__setstate__(state)
    back = pickle.loads(pickle.dumps(old))
    np.testing.assert_array_equal(back.labels, np.arange(6) % 2)
    parts = back.split({"a": 0.5, "b": 0.5}, seed=0)
    stored = [di.open_zarr(di.to_zarr(p, tmp_path / f"{k}.zarr.zip")) for k, p in parts.items()]
    ids = np.concatenate([p.images[:, 0, 0, 0].compute() for p in stored])
    labels = np.concatenate([p.labels for p in stored])
    assert sorted(ids.tolist()) == list(range(6))
    np.testing.assert_array_equal(labels, ids % 2)


def test_csv_labels_differing_only_in_letter_case_are_named(tmp_path, caplog):
    # annotators' 'Cat' beside 'cat' became two classes without a word (from_folder says so
    # of such folders)
    labels = ["cat", "cat", "Cat", "dog", "DOG"]
    for i in range(len(labels)):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    rows = "".join(f"{i}.png,{lab}\n" for i, lab in enumerate(labels))
    (tmp_path / "l.csv").write_text("path,label\n" + rows)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8))
    assert ds.classes == tuple(sorted(set(labels)))  # separate classes, as written
    assert [ds.classes[i] for i in ds.labels] == labels
    assert "differ only in letter case" in caplog.text
    assert "'Cat' (line 4) and 'cat' (line 2)" in caplog.text and "'DOG' (line 6)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8), classes=sorted(set(labels)))
    assert "letter case" not in caplog.text  # classes= says case matters


def test_from_csv_lines_with_fewer_values_than_the_header_are_said(image_folder, tmp_path, caplog):
    # a line cut short ("b.png,bee,45" for 4 columns) read its missing cells as NaN without
    # a word (a line with a value too many is refused); the oracle: Python's csv module
    import csv as pycsv

    files = [f.relative_to(image_folder).as_posix() for f in sorted(image_folder.rglob("*.png"))]
    text = "path,label,age,weight\n" + "".join(
        f"{p},{p.split('/')[0]},{31 + i},70\n" for i, p in enumerate(files[:-2])
    )
    text += f"{files[-2]},cat,45\n{files[-1]},cat\n"
    path = tmp_path / "a.csv"
    path.write_text(text)
    rows = list(pycsv.reader(text.splitlines()))
    cut = [n for n, r in enumerate(rows, start=1) if len(r) < len(rows[0])]
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(path, root=image_folder, size=(8, 8))
    assert (
        f"2 line(s) hold fewer values than the header's 4 columns (line {cut[0]}: 3)" in caplog.text
    )
    assert f"Check line(s) {cut[0]}, {cut[1]}" in caplog.text
    assert np.isnan(ds.columns["weight"][-2:]).all() and ds.columns["age"][-2] == 45


@pytest.mark.parametrize(
    "tail",
    [
        b"3.png,c" + b"\0" * 32,  # a write cut short, its end zero-filled
        b"3.png,cat\0\n",  # a class 'cat\0' beside 'cat'
        b"3.png\0,cat\n",  # a path no file system has (os.stat raised, naming nothing)
    ],
)
def test_from_csv_a_nul_character_is_refused_naming_its_line(tmp_path, tail):
    # NUL bytes were read as characters: a garbage class 'c\0\0...' (or 'cat\0' beside
    # 'cat') labelled a sample without a word, and a path holding one failed in to_zarr
    # with a bare "embedded null byte"
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "l.csv").write_bytes(b"path,label\n0.png,cat\n1.png,dog\n2.png,cat\n" + tail)
    for on_error in ("raise", "skip"):
        with pytest.raises(ValueError, match=r"l\.csv, line 5: holds a NUL character"):
            di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8), on_error=on_error)
    # lines ended by a lone CR (old Mac Excel) are counted as csv counts them
    cr = (tmp_path / "l.csv").read_bytes().replace(b"\n", b"\r")
    (tmp_path / "l.csv").write_bytes(cr)
    with pytest.raises(ValueError, match=r"l\.csv, line 5: holds a NUL character"):
        di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8))


def test_from_csv_lines_of_only_spaces_are_blank_lines(tmp_path):
    # pandas skips them, as blank lines; from_csv read one as a row with an empty path and
    # refused it, naming another line than its warning did
    import pandas as pd

    for i in range(2):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    text = "path,label\n0.png,cat\n  \n\t\n1.png,dog\n\n  \n"
    (tmp_path / "l.csv").write_text(text)
    want = pd.read_csv(tmp_path / "l.csv")
    ds = di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8))
    assert [os.path.basename(p) for p in ds.paths] == want["path"].tolist()
    assert [ds.classes[i] for i in ds.labels] == want["label"].tolist()
    # a quoted one ("" or "  ") is a row to pandas, with an empty path: refused as before
    for quoted in ('""', '"  "'):
        (tmp_path / "l.csv").write_text(f"path,label\n0.png,cat\n{quoted}\n1.png,dog\n")
        assert len(pd.read_csv(tmp_path / "l.csv", keep_default_na=False)) == 3
        with pytest.raises(ValueError, match=r"line 3: empty 'path'"):
            di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8))


@pytest.mark.parametrize("column", ["w\\h", "a/b", "__x", "labels"])
def test_from_csv_the_name_suggested_for_a_column_it_cannot_store_is_taken(
    tmp_path, caplog, column
):
    # for 'w\\h' the log suggested columns={'w\\h_': 'w\\h'}, itself refused, whose error
    # suggested 'w\\h' again: both hints replaced '/' only
    import csv as pycsv
    import re

    for i in range(2):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    with open(tmp_path / "l.csv", "w", newline="") as fh:
        pycsv.writer(fh).writerows(
            [["path", "label", column], ["0.png", "cat", 1], ["1.png", "dog", 2]]
        )
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8))
    hint = re.search(r"columns=\{'([^']+)': ", caplog.text)
    assert hint, caplog.text
    name = hint.group(1).encode().decode("unicode_escape")  # as the repr shows it
    ds = di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(8, 8), columns={name: column})
    assert ds.columns[name].tolist() == [1, 2]


def test_classes_a_split_leaves_out_of_train_are_named(caplog):
    # a class's only image filled an empty valid/ or test/, or went there by the fractions:
    # a model trained on train never saw it, and nothing said so (3 one-image classes gave
    # train 'c', valid 'a', test 'b'; the log said each class reaches every split)
    import logging

    names = [f"c{i:02d}" for i in range(40)]
    ds = di.ImageSet(np.zeros((40, 1, 1, 1), np.uint8), np.arange(40), classes=names)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        parts = ds.split({"train": 0.95, "valid": 0.025, "test": 0.025}, seed=0)
    trained = {names[c] for c in parts["train"].labels}
    gone = sorted(set(names) - trained)  # the oracle: the classes train holds
    assert gone and f"{len(gone)} class(es) have no sample in 'train'" in caplog.text
    assert all(repr(c) in caplog.text for c in gone)
    caplog.clear()
    three = di.ImageSet(np.zeros((3, 4, 4, 3), np.uint8), [0, 1, 2], classes=["a", "b", "c"])
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        three.split({"train": 0.8, "valid": 0.1, "test": 0.1})
    assert "2 class(es) have no sample in 'train'" in caplog.text
    assert "Each of the 3 classes gives every split" not in caplog.text
    caplog.clear()
    two_each = di.ImageSet(np.zeros((80, 1, 1, 1), np.uint8), np.arange(80) % 40, classes=names)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        parts = two_each.split({"train": 0.5, "valid": 0.5}, seed=0)
    assert set(parts["train"].labels.tolist()) == set(range(40))
    assert "no sample in 'train'" not in caplog.text


def test_fractions_a_hair_from_one_leave_no_sample_out():
    # accepted as adding up to 1 (within 1e-6), 0.49999951 twice lost 2 of 4,000,000
    # samples of one class; the oracle: every index in exactly one part
    n = 4_000_000
    labels = np.zeros(n, np.int64)
    from daskimg.read.imageset import split_indices

    parts = split_indices(n, {"train": 0.49999951, "test": 0.49999951}, labels=labels, seed=0)
    every = np.concatenate(list(parts.values()))
    assert len(every) == n and len(np.unique(every)) == n


def test_take_keeps_masked_values_and_unknown_widths_of_a_users_column():
    # (third-wave review) the checked cut returned a masked column's hidden values as data,
    # and refused a column whose width dask does not know (nan) as a wrong block
    n = 6
    images = np.zeros((n, 2, 2, 3), np.uint8)
    values = np.arange(n * 2).reshape(n, 2)
    masked = np.ma.masked_array(values, mask=values % 3 == 0)
    col = dask.array.from_array(masked, chunks=(2, 2), asarray=False)
    got = di.ImageSet(images, columns={"m": col}).take([4, 1]).columns["m"].compute()
    assert isinstance(got, np.ma.MaskedArray)
    assert got.tolist() == masked[[4, 1]].tolist()  # masked values as None, as numpy's
    x = dask.array.from_array(np.arange(24).reshape(n, 4), chunks=(3, 2))
    y = x[:, x[0] > 0]  # chunks ((3, 3), (nan, nan))
    got = di.ImageSet(images, columns={"y": y}).take([0, 5]).columns["y"].compute()
    np.testing.assert_array_equal(got, np.arange(24).reshape(n, 4)[[0, 5]][:, 1:])
