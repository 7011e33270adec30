"""from_folder drops nothing silently: stray files, unlabelled split folders, flat roots."""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import daskimg as di
from daskimg.cli import main
from daskimg.errors import NoImagesFoundError
from daskimg.read.folder import IMAGE_EXTENSIONS, _is_image


def _kaggle(root: Path) -> Path:
    """Labelled train/ and valid/, and a flat unlabelled test/ (a Kaggle download)."""
    di.testing.make_image_folder(root, n=8, size=(12, 16), split_dirs=("train", "valid"))
    flat = di.testing.make_image_folder(root / "tmp", n=5, size=(12, 16), classes=("x",))
    (root / "test").mkdir()
    for f in flat:
        shutil.move(f, root / "test" / f.name)
    shutil.rmtree(root / "tmp")
    return root


def test_an_unlabelled_train_beside_labelled_splits_is_named(tmp_path, caplog):
    # train/ with its images directly (labels in the file names, as Kaggle's dogs-vs-cats)
    # beside a test/ of class folders gave a training split without labels, without a word
    root = tmp_path / "data"
    flat = di.testing.make_image_folder(tmp_path / "tmp", n=4, size=(8, 8), classes=("x",))
    (root / "train").mkdir(parents=True)
    for f in flat:
        shutil.move(f, root / "train" / f.name)
    di.testing.make_image_folder(root / "test", n=4, size=(8, 8), classes=("cat", "dog"))
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        parts = di.from_folder(root, size=(8, 8)).split()
    assert parts["train"].labels is None and parts["test"].labels is not None
    assert "holds its images directly, without class folders" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_folder(_kaggle(tmp_path / "k"), size=(8, 8))  # a flat test/ is the usual case
    assert "without class folders" not in caplog.text


def test_resplit_does_not_spread_an_unlabelled_split_into_training(tmp_path):
    # train/<class>/ and a flat test/: resplit=True put test's unlabelled images into
    # train with label -1, stored and fed as such
    ds = di.from_folder(_kaggle(tmp_path / "k"), size=(8, 8))
    with pytest.raises(ValueError, match=r"\['test'\] hold no labels.*ds\.labels >= 0"):
        ds.split({"train": 0.5, "valid": 0.5}, resplit=True)
    labelled = ds.take(np.flatnonzero(ds.labels >= 0))  # what the message says to do
    parts = labelled.split({"train": 0.5, "valid": 0.5}, resplit=True)
    paths = sorted(p for part in parts.values() for p in part.paths)
    folders = sorted(
        p.relative_to(tmp_path / "k").as_posix()
        for p in (tmp_path / "k").rglob("*.png")
        if not p.relative_to(tmp_path / "k").as_posix().startswith("test/")
    )
    assert paths == folders and all((part.labels >= 0).all() for part in parts.values())


def test_class_names_composed_differently_are_named(tmp_path):
    # cafe + accent (as macOS writes it) beside a composed cafe were two classes printing
    # alike; across splits the error gave no hint why 'café' was not in train
    composed, decomposed = (
        unicodedata.normalize("NFC", "café"),
        unicodedata.normalize("NFD", "café"),
    )
    assert composed != decomposed
    root = tmp_path / "root"
    for name in (composed, decomposed):
        di.testing.make_image_folder(root, n=2, size=(8, 8), classes=(name,))
    with pytest.raises(ValueError, match=r"composed differently.*Merge them"):
        di.from_folder(root, size=(8, 8))
    splits = tmp_path / "splits"
    di.testing.make_image_folder(splits / "train", n=2, size=(8, 8), classes=(composed, "dog"))
    di.testing.make_image_folder(splits / "test", n=1, size=(8, 8), classes=(decomposed,))
    with pytest.raises(ValueError, match=r"in train/, the same letters composed differently"):
        di.from_folder(splits, size=(8, 8))
    # a trailing space, a zero-width space: also two classes that print alike
    for odd in ("cat ", "cat\u200b"):
        other = tmp_path / f"odd{len(odd.encode())}"
        for name in ("cat", odd):
            di.testing.make_image_folder(other, n=2, size=(8, 8), classes=(name,))
        assert sorted(os.listdir(other)) == sorted(["cat", odd])  # the oracle: two folders
        with pytest.raises(ValueError, match=r"invisible characters or spaces.*Merge them"):
            di.from_folder(other, size=(8, 8))


def test_an_image_beside_the_class_folders_is_an_error_naming_it(image_folder, caplog):
    di.testing.make_image(seed=1).save(image_folder / "stray.jpg")
    with pytest.raises(
        ValueError, match=r"1 image file\(s\) directly in .*src.*'stray\.jpg'.*stray='ignore'"
    ):
        di.from_folder(image_folder, size=(8, 8))
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(image_folder, size=(8, 8), stray="ignore")
    assert len(ds) == 24 and "stray.jpg" not in " ".join(ds.paths)
    assert "stray.jpg" in caplog.text
    with pytest.raises(ValueError, match="stray must be"):
        di.from_folder(image_folder, size=(8, 8), stray="skip")


def test_kaggle_flat_test_folder_is_an_unlabelled_split(tmp_path):
    root = _kaggle(tmp_path / "data")
    ds = di.from_folder(root, size=(8, 8))
    assert ds.classes == ("cat", "dog")
    parts = ds.split()
    assert {k: len(v) for k, v in parts.items()} == {"train": 8, "valid": 8, "test": 5}
    test = parts["test"]
    assert test.labels is None
    assert sorted(test.paths) == sorted(f"test/x_{i:04d}.png" for i in range(5))
    assert test.images.compute().shape == (5, 8, 8, 3)
    for name in ("train", "valid"):
        assert set(parts[name].labels.tolist()) == {0, 1}
    # in the whole set, the test samples carry -1 (no label)
    assert (ds.labels[ds.source_splits == "test"] == -1).all()


def test_files_and_class_folders_in_one_split_folder_is_an_error_naming_it(tmp_path):
    root = _kaggle(tmp_path / "data")
    (root / "test" / "cat").mkdir()
    di.testing.make_image(seed=2).save(root / "test" / "cat" / "c.png")
    with pytest.raises(
        ValueError,
        match=r"5 image file\(s\) directly in '.*data/test', beside its class folders \(cat\)",
    ):
        di.from_folder(root, size=(8, 8))
    ds = di.from_folder(root, size=(8, 8), stray="ignore")
    assert len(ds.split()["test"]) == 1


def test_an_image_beside_the_split_folders_is_an_error(tmp_path):
    root = _kaggle(tmp_path / "data")
    di.testing.make_image(seed=3).save(root / "readme.png")
    with pytest.raises(
        ValueError, match=r"directly in '.*data', beside its split folders: 'readme\.png'"
    ):
        di.from_folder(root, size=(8, 8))


def test_a_flat_folder_is_an_unlabelled_set(tmp_path):
    flat = di.testing.make_image_folder(tmp_path / "tmp", n=3, size=(8, 8), classes=("x",))
    (tmp_path / "flat").mkdir()
    for f in flat:
        shutil.move(f, tmp_path / "flat" / f.name)
    ds = di.from_folder(tmp_path / "flat", size=(8, 8))
    assert ds.labels is None and ds.classes == () and len(ds) == 3
    assert ds.paths.tolist() == [f"x_{i:04d}.png" for i in range(3)]
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(NoImagesFoundError, match="no image files under"):
        di.from_folder(tmp_path / "empty", size=(8, 8))


def test_the_same_rules_hold_at_a_url(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    root = _kaggle(tmp_path / "data")
    fs = fsspec.filesystem("memory")
    url = "memory://daskimg-test-folder/data"
    for f in sorted(root.rglob("*.png")):
        fs.pipe(f"{url}/{f.relative_to(root).as_posix()}", f.read_bytes())
    try:
        remote = di.from_folder(url, size=(8, 8))
        local = di.from_folder(root, size=(8, 8))
        assert remote.paths.tolist() == local.paths.tolist()
        np.testing.assert_array_equal(remote.labels, local.labels)
        parts = remote.split()
        assert parts["test"].labels is None
        np.testing.assert_array_equal(
            parts["test"].images.compute(), local.split()["test"].images.compute()
        )
        fs.pipe(f"{url}/train/stray.png", (root / "test" / "x_0000.png").read_bytes())
        with pytest.raises(ValueError, match=r"directly in '.*data/train'.*'stray\.png'"):
            di.from_folder(url, size=(8, 8))
    finally:
        fs.rm("/daskimg-test-folder", recursive=True)


def test_ingest_writes_the_unlabelled_test_split(tmp_path):
    root = _kaggle(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["ingest", str(root), str(out), "--size", "8", "8"]) == 0
    test = di.open_zarr(out / "test.zarr.zip")
    assert len(test) == 5 and test.labels is None
    assert sorted(test.paths) == sorted(f"test/x_{i:04d}.png" for i in range(5))
    train = di.open_zarr(out / "train.zarr.zip")
    assert train.labels is not None and set(train.labels.tolist()) == {0, 1}


@pytest.mark.parametrize("splits", [None, ("train", "valid"), ("valid", "test")])
def test_ingest_into_a_folder_inside_its_source_reads_the_same_set_again(tmp_path, splits):
    # the second run read OUT as one more class ('out', no images): 3 classes instead of 2,
    # so it refused the finished stores as "written from other files"; beside split
    # folders OUT was a folder that is no split (an error)
    root = tmp_path / "data"
    di.testing.make_image_folder(root, n=12, size=(8, 8), split_dirs=splits)
    out = root / "stores"
    for _ in range(2):
        assert main(["ingest", str(root), str(out), "--size", "8", "8"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{s}.zarr.zip" for s in (splits or ("train", "valid", "test")))
    for name in names:
        store = di.open_zarr(out / name)
        assert store.classes == ("cat", "dog")
        for path, label in zip(store.paths, store.labels, strict=True):
            assert Path(path).parent.name == store.classes[label]  # the folder is the oracle
    # from Python: exclude= leaves the folder out, at a URL too; a relative folder is one
    # inside the root (from any working directory)
    assert di.from_folder(root, size=(8, 8), exclude=out).classes == ("cat", "dog")
    assert di.from_folder(root, size=(8, 8), exclude="stores").classes == ("cat", "dog")
    fsspec = pytest.importorskip("fsspec")
    fs, url = fsspec.filesystem("memory"), "memory://daskimg-test-exclude/data"
    try:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                fs.pipe(f"{url}/{f.relative_to(root).as_posix()}", f.read_bytes())
        with_out = di.from_folder(url, size=(8, 8), exclude=url + "/stores")
        assert with_out.classes == ("cat", "dog")
        for other in ("memory:///daskimg-test-exclude/data/stores", "stores"):
            assert di.from_folder(url, size=(8, 8), exclude=other).classes == ("cat", "dog")
        assert sorted(with_out.paths) == sorted(
            di.from_folder(root, size=(8, 8), exclude=out).paths
        )
    finally:
        fs.rm("/daskimg-test-exclude", recursive=True)


@pytest.mark.parametrize("url", [False, True])
def test_files_that_are_not_images_are_named_not_dropped_silently(tmp_path, caplog, url):
    """A photo in a format daskimg does not read (.heic), notes and annotations: left out
    of the samples, and a warning names them; hidden files (.DS_Store) are not mentioned."""
    import fsspec

    root = _kaggle(tmp_path / "k")
    (root / "train" / "cat" / "IMG_0001.heic").write_bytes(b"not read")
    (root / "train" / "cat" / "notes.txt").write_text("hi")
    (root / "test" / "sample_submission.csv").write_text("id,label\n")
    (root / "labels.csv").write_text("path,label\n")
    (root / "train" / ".DS_Store").write_bytes(b"x")
    where: str | Path = root
    if url:
        fs = fsspec.filesystem("memory")
        fs.put(str(root), "/notimages/k", recursive=True)
        where = "memory://notimages/k"
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(where, size=(8, 8), storage_options={} if url else None)
    assert not any(p.endswith((".heic", ".txt", ".csv")) for p in ds.paths)
    assert len(ds) == len(di.from_folder(_kaggle(tmp_path / "clean"), size=(8, 8)))
    (message,) = [r.getMessage() for r in caplog.records if "not an image ending" in r.getMessage()]
    assert "left out 4 file(s)" in message and ".csv: 2" in message
    for name in ("labels.csv", "IMG_0001.heic", "notes.txt"):
        assert name in message or "1 more" in message
    assert ".DS_Store" not in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_folder(tmp_path / "clean", size=(8, 8))
    assert "not an image ending" not in caplog.text


def test_an_empty_class_folder_is_named(image_folder, caplog):
    (image_folder / "zebra").mkdir()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(image_folder, size=(8, 8))
    assert "zebra" in ds.classes and not np.any(ds.labels == ds.classes.index("zebra"))
    assert "without images: 'zebra'" in caplog.text


@pytest.mark.parametrize("url", [False, True])
def test_folders_beside_the_split_folders_are_an_error_not_dropped(tmp_path, caplog, url):
    # a class named 'train' among vehicles made the root look like a root of splits, and
    # bus/, car/, truck/ beside it were dropped with their labels; so was a dev/ split
    root = tmp_path / "vehicles"
    di.testing.make_image_folder(root, n=8, size=(8, 8), classes=("bus", "car", "train", "truck"))
    where = str(root)
    if url:
        fsspec = pytest.importorskip("fsspec")
        fs = fsspec.filesystem("memory")
        where = "memory://daskimg-test-beside/vehicles"
        for f in sorted(root.rglob("*.png")):
            fs.pipe(f"{where}/{f.relative_to(root).as_posix()}", f.read_bytes())
    try:
        with pytest.raises(
            ValueError, match=r"split folder\(s\) 'train'.*'bus', 'car', 'truck'.*rename"
        ):
            di.from_folder(where, size=(8, 8))
        with caplog.at_level(logging.WARNING, logger="daskimg"):
            ds = di.from_folder(where, size=(8, 8), stray="ignore")
        assert "'bus', 'car', 'truck'" in caplog.text and "left out" in caplog.text
        # what stray='ignore' keeps is the train split, and all of it
        expected = sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.png"))
        assert sorted(ds.paths.tolist()) == expected
    finally:
        if url:
            fs.rm("/daskimg-test-beside", recursive=True)
    # hidden folders beside splits are not news
    kaggle = _kaggle(tmp_path / "data")
    (kaggle / ".ipynb_checkpoints").mkdir()
    assert len(di.from_folder(kaggle, size=(8, 8))) == 21


@pytest.mark.parametrize("url", [False, True])
@pytest.mark.parametrize("splits", [("valid", "test"), ("test",), ("val",)])
def test_split_folders_without_train_are_splits_not_classes(tmp_path, url, splits):
    # valid/{cat,dog} and test/{cat,dog} (an evaluation download) were read as two classes
    # 'test' and 'valid': cat and dog were lost, every sample labelled by its split
    root = tmp_path / "eval"
    di.testing.make_image_folder(root, n=6, size=(8, 8), classes=("cat", "dog"), split_dirs=splits)
    where = str(root)
    if url:
        fsspec = pytest.importorskip("fsspec")
        fs = fsspec.filesystem("memory")
        where = f"memory://daskimg-test-nosplit-{'-'.join(splits)}/eval"
        for f in sorted(root.rglob("*.png")):
            fs.pipe(f"{where}/{f.relative_to(root).as_posix()}", f.read_bytes())
    try:
        ds = di.from_folder(where, size=(8, 8))
        assert ds.classes == ("cat", "dog")
        canonical = {"val": "valid"}
        parts = ds.split()
        assert sorted(parts) == sorted(canonical.get(s, s) for s in splits)
        for split_dir in splits:
            part = parts[canonical.get(split_dir, split_dir)]
            # the oracle: the class folder each file lies in
            want = sorted(
                (f.relative_to(root).as_posix(), f.parent.name)
                for f in (root / split_dir).rglob("*.png")
            )
            got = sorted((p, part.classes[i]) for p, i in zip(part.paths, part.labels, strict=True))
            assert got == want and len(got) == 6
    finally:
        if url:
            fs.rm(f"/daskimg-test-nosplit-{'-'.join(splits)}", recursive=True)


def test_a_class_named_like_a_split_without_train_stays_a_class(tmp_path, caplog):
    root = tmp_path / "data"
    di.testing.make_image_folder(root, n=4, size=(8, 8), classes=("cat", "test"))
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(root, size=(8, 8))
    assert ds.classes == ("cat", "test") and ds.source_splits is None
    assert sorted(np.bincount(ds.labels).tolist()) == [2, 2]
    # said: a folder of test images beside cat/ and dog/ would be trained on as a class
    assert "'test' are named like splits but are read as classes" in caplog.text


def test_a_link_back_into_the_tree_is_not_read_twice_under_another_label(tmp_path, caplog):
    root = tmp_path / "data"
    di.testing.make_image_folder(root, n=6, size=(8, 8), classes=("cat", "dog"))
    (root / "cat" / "up").symlink_to("..")  # a loop to the root: dog's files under cat
    (root / "cat" / "dogs").symlink_to(root / "dog")  # another class's folder
    outside = tmp_path / "more_cats"
    di.testing.make_image_folder(outside, n=2, size=(8, 8), classes=("c",))
    (root / "cat" / "extra").symlink_to(outside / "c")  # data elsewhere: followed
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(root, size=(8, 8))
    label_of = dict(zip(ds.paths.tolist(), (ds.classes[i] for i in ds.labels), strict=True))
    # every real file once, under the class folder it lives in
    reals = {os.path.realpath(root / p) for p in label_of}
    assert len(reals) == len(label_of) == 8
    assert {p: c for p, c in label_of.items() if c == "dog"} == {
        f"dog/{f.name}": "dog" for f in sorted((root / "dog").iterdir())
    }
    assert sorted(p for p, c in label_of.items() if c == "cat") == sorted(
        [f"cat/{f.name}" for f in (root / "cat").glob("*.png")]
        + [f"cat/extra/{f.name}" for f in (outside / "c").iterdir()]
    )
    assert "cat/up" in caplog.text and "cat/dogs" in caplog.text


def test_a_linked_class_or_split_folder_never_takes_the_real_folders_images(tmp_path, caplog):
    # a link to a folder of the tree whose name sorted first was read instead of the folder:
    # alias_cat -> cat took cat's images (cat left an empty class), test/dog -> ../train/dog
    # took train's dogs into test, and test -> train emptied train
    root = tmp_path / "classes"
    di.testing.make_image_folder(root, n=6, size=(8, 8), classes=("cat", "dog"))
    (root / "alias_cat").symlink_to("cat")
    splits = tmp_path / "splits"
    di.testing.make_image_folder(splits, n=8, size=(8, 8), split_dirs=("train", "test"))
    shutil.rmtree(splits / "test" / "dog")
    (splits / "test" / "dog").symlink_to(os.path.join("..", "train", "dog"))
    whole = tmp_path / "whole"
    di.testing.make_image_folder(whole / "train", n=4, size=(8, 8), classes=("cat", "dog"))
    (whole / "test").symlink_to("train")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(root, size=(8, 8))
        parts = di.from_folder(splits, size=(8, 8)).split()
        only = di.from_folder(whole, size=(8, 8)).split()

    def by_folder(tree):  # the oracle: each real file under the folder it lives in
        # (pathlib's rglob does not go through links to folders)
        return sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))

    assert ds.classes == ("cat", "dog")
    assert sorted(ds.paths.tolist()) == by_folder(root)
    assert all(p.split("/")[0] == ds.classes[i] for p, i in zip(ds.paths, ds.labels, strict=True))
    train_files = sorted(
        p.relative_to(splits).as_posix() for p in (splits / "train").rglob("*.png")
    )
    assert sorted(parts["train"].paths.tolist()) == train_files
    assert all(p.startswith("test/cat/") for p in parts["test"].paths.tolist())
    assert sorted(only["train"].paths.tolist()) == by_folder(whole) and "test" not in only
    assert "alias_cat" in caplog.text
    assert "test/dog" in caplog.text.replace(os.sep, "/")

    # the same when the real folders are themselves links to data kept elsewhere (a train/
    # on another disk, class folders linked in): only links into the tree are aliases
    ext = tmp_path / "ext"
    di.testing.make_image_folder(ext / "train", n=4, size=(8, 8), classes=("cat", "dog"))
    di.testing.make_image_folder(ext / "classes", n=4, size=(8, 8), classes=("cat", "dog"))
    away = tmp_path / "away"
    away.mkdir()
    (away / "train").symlink_to(ext / "train")
    di.testing.make_image_folder(away / "test", n=1, size=(8, 8), classes=("cat",))
    (away / "test" / "dog").symlink_to(os.path.join("..", "train", "dog"))
    linked = tmp_path / "linked"
    linked.mkdir()
    for c in ("cat", "dog"):
        (linked / c).symlink_to(ext / "classes" / c)
    (linked / "alias_cat").symlink_to("cat")
    parts = di.from_folder(away, size=(8, 8)).split()
    own = sorted(
        f"train/{p.relative_to(ext / 'train').as_posix()}" for p in (ext / "train").rglob("*.png")
    )
    assert sorted(parts["train"].paths.tolist()) == own
    assert all(p.startswith("test/cat/") for p in parts["test"].paths.tolist())
    ds = di.from_folder(linked, size=(8, 8))
    assert ds.classes == ("cat", "dog")
    assert sorted(ds.paths.tolist()) == sorted(
        p.relative_to(ext / "classes").as_posix() for p in (ext / "classes").rglob("*.png")
    )


def test_folders_systems_keep_beside_the_data_are_not_read(tmp_path):
    # Synology's @eaDir became a class, and its thumbnails of cat/a.png (cat/@eaDir/a.png/
    # SYNOPHOTO_THUMB_M.png) second samples labelled cat; Windows' recycle bin was data
    root = tmp_path / "data"
    files = di.testing.make_image_folder(root, n=4, size=(8, 8), classes=("cat", "dog"))
    junk = [
        root / "cat" / "@eaDir" / files[0].name / "SYNOPHOTO_THUMB_M.png",
        root / "@eaDir" / "x" / "SYNOPHOTO_THUMB_S.png",
        root / "dog" / "$RECYCLE.BIN" / "old.png",
        root / "#recycle" / "cat" / "gone.png",
        root / "System Volume Information" / "x.png",
    ]
    for j in junk:
        j.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[0], j)
    ds = di.from_folder(root, size=(8, 8))
    assert ds.classes == ("cat", "dog")
    assert sorted(ds.paths.tolist()) == sorted(f.relative_to(root).as_posix() for f in files)


def test_a_broken_link_is_named_when_decoding_not_dropped(tmp_path):
    # a git-annex or DVC file whose content is not fetched yet is a link to nothing
    flat = di.testing.make_image_folder(tmp_path / "tmp", n=2, size=(8, 8), classes=("x",))
    root = tmp_path / "data"
    (root / "test").mkdir(parents=True)
    for f in flat:
        shutil.move(f, root / "test" / f.name)
    di.testing.make_image_folder(root / "train", n=4, size=(8, 8))
    (root / "test" / "z_missing.png").symlink_to(tmp_path / "annex" / "not-fetched")
    ds = di.from_folder(root, size=(8, 8))
    assert "test/z_missing.png" in ds.paths.tolist()
    with pytest.raises(di.errors.DecodeError, match=r"z_missing\.png") as e:
        ds.split()["test"].images.compute()
    # the hint names the link's target (it named the link itself as a namesake beside it)
    assert "link to " + repr(str(tmp_path / "annex" / "not-fetched")) in str(e.value)
    assert "beside it" not in str(e.value)
    paths = di.read.files.expand_paths(str(root / "test" / "*.png"))
    assert [Path(p).name for p in paths] == ["x_0000.png", "x_0001.png", "z_missing.png"]


def _as_url(root: Path, where: str) -> str:
    """The tree ``root`` copied to the memory:// URL ``where``."""
    fs = pytest.importorskip("fsspec").filesystem("memory")
    for f in sorted(root.rglob("*")):
        if f.is_file():
            fs.pipe(f"{where}/{f.relative_to(root).as_posix()}", f.read_bytes())
    return where


@pytest.mark.parametrize("url", [False, True])
def test_a_dataset_one_folder_down_is_refused_not_read_as_one_class(tmp_path, url):
    # an archive unpacked as root/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA} was read as
    # the single class 'chest_xray', every split mixed into it (split() then put test images
    # in train); __MACOSX beside it (a macOS zip) added a class of its own
    root = tmp_path / "download"
    di.testing.make_image_folder(
        root / "chest_xray", n=4, size=(8, 8), classes=("NORMAL", "PNEUMONIA"),
        split_dirs=("train", "val", "test"),
    )  # fmt: skip
    (root / "__MACOSX" / "chest_xray" / "train").mkdir(parents=True)
    (root / "__MACOSX" / "chest_xray" / "train" / "._NORMAL_0000.png").write_bytes(b"\0\5\26")
    where = (
        _as_url(root, f"memory://daskimg-test-wrapped-{os.getpid()}/download") if url else str(root)
    )
    with pytest.raises(
        ValueError, match=r"'chest_xray' holds the split folders test/, train/, val/"
    ):
        di.from_folder(where, size=(8, 8))
    inner = f"{where}/chest_xray"
    ds = di.from_folder(inner, size=(8, 8))
    assert ds.classes == ("NORMAL", "PNEUMONIA") and sorted(ds.split()) == [
        "test",
        "train",
        "valid",
    ]
    assert len(ds) == 12
    # a class folder with ordinary subfolders (one of them named like a split, without
    # train/ and beside another) is still a class
    plain = tmp_path / "plain"
    di.testing.make_image_folder(plain / "cat" / "indoor", n=2, size=(8, 8), classes=("a",))
    di.testing.make_image_folder(plain / "dog", n=2, size=(8, 8), classes=("test", "puppies"))
    assert di.from_folder(plain, size=(8, 8)).classes == ("cat", "dog")


WRAPPED = {
    # Microsoft's cats-vs-dogs zip: PetImages/{Cat,Dog}; every sample was class 'PetImages'
    "group": ("PetImages/{c}", ("Cat", "Dog"), r"only class folder 'PetImages' holds no images"),
    # two folders down: one class 'archive', train and test mixed into it
    "deeper": ("archive/dataset/{s}/{c}", ("cat", "dog"), r"the dataset is 2 folders down"),
    # a wrapper inside the splits: every sample of train/ was class 'images'
    "in_split": ("{s}/images/{c}", ("cat", "dog"), r"train/images'?: the class folders are a"),
    # Kaggle's train/train/{cat,dog}
    "kaggle": ("{s}/{s}/{c}", ("cat", "dog"), r"only class folder is 'train', named like a split"),
}


@pytest.mark.parametrize("url", [False, True])
@pytest.mark.parametrize("layout", sorted(WRAPPED))
def test_a_dataset_wrapped_in_folders_is_refused_not_read_as_one_class(tmp_path, url, layout):
    from PIL import Image

    pattern, classes, message = WRAPPED[layout]
    root = tmp_path / f"download_{layout}"
    written = {}
    for s in ("train", "test"):
        for k, c in enumerate(classes):
            folder = root / pattern.format(s=s, c=c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (6, 6), (k, i, 9)).save(folder / f"{s}{i}.png")
                written[folder / f"{s}{i}.png"] = c
    where = _as_url(root, f"memory://daskimg-wrapped-{layout}-{os.getpid()}") if url else str(root)
    with pytest.raises(ValueError, match=message):
        di.from_folder(where, size=(6, 6))
    if layout in ("group", "deeper"):
        inner = f"{where}/" + pattern.split("/{")[0].format(s="", c="")
        ds = di.from_folder(inner, size=(6, 6))  # the folder the message names reads right
        # the oracle: the folder each image was written into
        assert sorted(ds.classes) == sorted(classes)
        by_path = {p.relative_to(root).as_posix(): c for p, c in written.items()}
        top = inner[len(where) + 1 :]
        got = {f"{top}/{p}": ds.classes[int(i)] for p, i in zip(ds.paths, ds.labels, strict=True)}
        assert got == by_path
    if layout == "group":  # one class on purpose, with folders of its own: classes= says so
        assert di.from_folder(where, size=(6, 6), classes=["PetImages"]).classes == ("PetImages",)


def test_one_class_in_one_folder_and_a_nested_test_class_are_still_read(tmp_path):
    from PIL import Image

    # one class whose images lie in one folder below it: one class either way, no labels lost
    one = tmp_path / "one" / "faces" / "2019"
    one.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (6, 6), (i, 0, 0)).save(one / f"{i}.png")
    ds = di.from_folder(tmp_path / "one", size=(6, 6))
    assert ds.classes == ("faces",) and len(ds) == 3
    # a test split holding one of train's classes, in folders of its own: a small test split
    _split_tree(tmp_path / "split", {"train": ("cat", "dog")})
    _split_tree(tmp_path / "split" / "test" / "cat", {"a": ("x",), "b": ("y",)})
    ds = di.from_folder(tmp_path / "split", size=(6, 6))
    assert ds.classes == ("cat", "dog")
    assert len(ds.split()["test"]) == 2


def test_a_class_train_holds_no_image_of_is_refused(tmp_path):
    # train/emu/ empty and valid/emu/ with an image: emu passed as a class train has, and no
    # training sample had it; without the empty folder the same data was refused
    _split_tree(tmp_path, {"train": ("cat", "dog"), "valid": ("cat", "emu")})
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match=r"does not: 'emu' \('emu' empty in train/\)"):
        di.from_folder(tmp_path, size=(6, 6))
    with pytest.raises(ValueError, match=r"beside it does not: 'emu'"):
        di.from_folder(tmp_path / "valid", size=(6, 6))


def test_empty_split_folders_are_named(tmp_path, caplog):
    _split_tree(tmp_path, {"train": ("cat", "dog")})
    (tmp_path / "valid").mkdir()
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(tmp_path, size=(6, 6))
    assert sorted(ds.split()) == ["train"]
    assert "hold no images, so the set has no such split" in caplog.text
    assert "test'" in caplog.text and "valid'" in caplog.text


def test_class_folders_named_by_numbers_say_their_text_order(tmp_path, caplog):
    _split_tree(tmp_path, {"train": ("0", "1", "2", "10")})
    root = tmp_path / "train"
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(root, size=(6, 6))
    assert ds.classes == ("0", "1", "10", "2")  # as torchvision's ImageFolder numbers them
    assert "numbered in text order" in caplog.text and "'2' -> 3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(root, size=(6, 6), classes=["0", "1", "2", "10"])
    assert _by_folder(ds) == {c: c for c in ("0", "1", "2", "10")}
    assert "text order" not in caplog.text
    caplog.clear()
    _split_tree(tmp_path / "small", {"x": ("0", "1", "2")})
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_folder(tmp_path / "small" / "x", size=(6, 6))
    assert "text order" not in caplog.text  # 0..9 sort alike either way


def test_class_folders_differing_only_in_case_are_named(tmp_path, caplog):
    _split_tree(tmp_path, {"x": ("Cat", "cat", "dog")})
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(tmp_path / "x", size=(6, 6))
    assert ds.classes == ("Cat", "cat", "dog")  # separate classes, as the folders are
    assert "differ only in letter case" in caplog.text and "'Cat' and 'cat'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_folder(tmp_path / "x", size=(6, 6), classes=["Cat", "cat", "dog"])
    assert "letter case" not in caplog.text


@pytest.mark.parametrize("name", ["train ", "train\u200b", " valid"])
def test_a_split_folder_named_but_for_spaces_is_refused(tmp_path, name):
    # 'train ' was read as a class beside 'test', the split names becoming the labels
    _split_tree(tmp_path, {name: ("cat", "dog"), "test": ("cat", "dog")})
    with pytest.raises(ValueError, match=r"named like the split '(train|valid)' but for spaces"):
        di.from_folder(tmp_path, size=(6, 6))


def test_macosx_folders_are_never_classes(tmp_path):
    root = tmp_path / "data"
    files = di.testing.make_image_folder(root, n=4, size=(8, 8))
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._cat_0000.png").write_bytes(b"\0\5\26\7")
    ds = di.from_folder(root, size=(8, 8))
    assert ds.classes == ("cat", "dog")
    assert sorted(ds.paths.tolist()) == sorted(f.relative_to(root).as_posix() for f in files)


@pytest.mark.parametrize("url", [False, True])
@pytest.mark.parametrize(
    ("folder", "hint"),
    [("test", None), ("images", None), ("Cat", "'Cat' is 'cat' in train/"), ("cow", None)],
)
def test_class_folders_a_split_has_and_train_lacks_are_refused(tmp_path, url, folder, hint):
    # Kaggle's test/test/*.png (or test/images/) became a class 'test' that every test sample
    # carried; a 'Cat' beside train's 'cat' became a class no training sample has
    root = tmp_path / "data"
    di.testing.make_image_folder(root, n=4, size=(8, 8), split_dirs=("train", "test"))
    di.testing.make_image_folder(root / "test", n=2, size=(8, 8), classes=(folder,), seed=3)
    where = (
        _as_url(root, f"memory://daskimg-test-extra-{folder}-{os.getpid()}/data")
        if url
        else str(root)
    )
    with pytest.raises(ValueError, match=rf"does not: '{folder}'") as err:
        di.from_folder(where, size=(8, 8))
    assert (hint or "") in str(err.value)
    # a class train has and valid lacks is fine: indices follow train's classes
    shutil.rmtree(root / "test" / folder)
    shutil.rmtree(root / "test" / "dog")
    parts = di.from_folder(root, size=(8, 8)).split()
    assert parts["test"].classes == ("cat", "dog") and set(parts["test"].labels.tolist()) == {0}


def test_file_links_to_images_of_the_tree_are_read_once_under_their_own_folder(tmp_path, caplog):
    # dog/x.png -> ../cat/a.png came back as a second sample labelled dog, and a test image
    # linked to a training image put that image in both splits
    root = tmp_path / "data"
    di.testing.make_image_folder(root, n=8, size=(8, 8), split_dirs=("train", "test"))
    real = sorted(root.rglob("*.png"))
    train_cat = sorted((root / "train" / "cat").glob("*.png"))
    (root / "test" / "dog" / "leak.png").symlink_to(train_cat[0])
    (root / "train" / "dog" / "aaa.png").symlink_to(train_cat[1])  # before its file in the walk
    outside = tmp_path / "pool" / "z.png"
    outside.parent.mkdir()
    shutil.copy(train_cat[2], outside)
    (root / "train" / "cat" / "zzz.png").symlink_to(outside)  # a link out of the tree is read
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(root, size=(8, 8))
    assert "left out 2 link(s)" in caplog.text and "leak.png" in caplog.text
    want = sorted([p.relative_to(root).as_posix() for p in real] + ["train/cat/zzz.png"])
    assert sorted(ds.paths.tolist()) == want
    labels = dict(zip(ds.paths.tolist(), (ds.classes[i] for i in ds.labels), strict=True))
    assert all(labels[p] == p.split("/")[1] for p in want)


def test_a_folder_that_cannot_be_listed_is_an_error_naming_it(tmp_path, monkeypatch):
    # os.walk leaves out a folder it cannot list without a word (root ignores permissions,
    # so the refusal is simulated)
    root = tmp_path / "data"
    di.testing.make_image_folder(root / "cat" / "private", n=2, size=(8, 8), classes=("x",))
    di.testing.make_image_folder(root, n=2, size=(8, 8), classes=("dog",))
    listing = os.scandir

    def refuse(path):
        if os.fspath(path).endswith("private"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(PermissionError, match=r"cannot list the folder '.*private'"):
        di.from_folder(root, size=(8, 8))


def test_class_first_trees_and_annexed_duplicates_read_as_before(tmp_path):
    # (review) root/{cat,dog}/{train,test}/ is several classes, not a dataset one folder
    # down; git-annex keeps identical files once, so two samples may link to one object in
    # the hidden .git/annex (or to one not fetched yet): both are samples
    root = tmp_path / "classfirst"
    for c in ("cat", "dog"):
        di.testing.make_image_folder(root / c, n=4, size=(8, 8), classes=("train", "test"))
    ds = di.from_folder(root, size=(8, 8))
    assert ds.classes == ("cat", "dog") and len(ds) == 8
    annex = tmp_path / "annexed"
    objects = annex / ".git" / "annex" / "objects"
    objects.mkdir(parents=True)
    di.testing.make_image(seed=3).save(objects / "SHA256-same.png")
    for rel in ("cat/0001.png", "cat/0002.png", "dog/0001.png", "dog/0002.png"):
        (annex / rel).parent.mkdir(exist_ok=True)
        target = "SHA256-same.png" if rel != "dog/0002.png" else "SHA256-not-fetched.png"
        (annex / rel).symlink_to(objects / target)
    ds = di.from_folder(annex, size=(8, 8))
    # all four, the one not fetched too (decoding names it)
    assert sorted(ds.paths.tolist()) == [
        "cat/0001.png",
        "cat/0002.png",
        "dog/0001.png",
        "dog/0002.png",
    ]


def test_an_empty_folder_beside_split_folders_is_nothing_as_at_a_url(tmp_path):
    # valid/ test/ and an empty models/ was read as classes 'test' and 'valid' on disk (a
    # URL listing, which has no empty folders, read the same tree as two splits)
    root = tmp_path / "eval"
    di.testing.make_image_folder(root, n=4, size=(8, 8), split_dirs=("valid", "test"))
    (root / "models" / "empty").mkdir(parents=True)
    ds = di.from_folder(root, size=(8, 8))
    assert ds.classes == ("cat", "dog") and sorted(ds.split()) == ["test", "valid"]
    (root / "train_backup").mkdir()  # beside train/ too: nothing to leave out, no error
    di.testing.make_image_folder(root, n=4, size=(8, 8), split_dirs=("train",))
    assert sorted(di.from_folder(root, size=(8, 8)).split()) == ["test", "train", "valid"]


def _tiny(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


@pytest.mark.parametrize("names", [("training", "testing"), ("training", "validation")])
def test_training_and_testing_folders_are_splits(tmp_path, names):
    # MNIST-png's layout: training/<digit>/, testing/<digit>/
    expected = {}
    for s in names:
        for c in ("0", "1", "2"):
            for j in range(2):
                rel = f"{s}/{c}/{s}{c}{j}.png"
                _tiny(tmp_path / rel, 10 * j)
                expected[rel] = c
    ds = di.from_folder(tmp_path, size=(4, 4))
    assert ds.classes == ("0", "1", "2")
    got = {str(p): ds.classes[int(label)] for p, label in zip(ds.paths, ds.labels, strict=True)}
    assert got == expected
    parts = ds.split()
    split = {"training": "train", "testing": "test", "validation": "valid"}
    assert set(parts) == {split[s] for s in names}
    for s in names:
        assert sorted(map(str, parts[split[s]].paths)) == sorted(
            r for r in expected if r.startswith(s + "/")
        )


def test_class_folders_holding_only_alike_folders_are_named_in_a_warning(tmp_path, caplog):
    for s in ("trn", "tst"):
        for c in ("0", "1"):
            _tiny(tmp_path / s / c / "a.png", 0)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(tmp_path, size=(4, 4))
    assert ds.classes == ("trn", "tst")  # read as asked, but said
    assert "'trn', 'tst' hold no images of their own" in caplog.text
    # folders named as splits inside each class (root/{cat,dog}/{train,test}): the message
    # said to rename them to split names, which they have; the fix is to put them at the top
    caplog.clear()
    for c in ("cat", "dog"):
        for s in ("train", "test"):
            _tiny(tmp_path / "pets2" / c / s / "a.png", 0)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert di.from_folder(tmp_path / "pets2", size=(4, 4)).classes == ("cat", "dog")
    assert "only the split folders 'test', 'train' in each" in caplog.text
    assert "put the split folders at the top (test/<class>/...)" in caplog.text
    caplog.clear()
    for c in ("cat", "dog"):  # classes with images of their own: nothing to say
        _tiny(tmp_path / "pets" / c / "a.png", 0)
        _tiny(tmp_path / "pets" / c / "2019" / "b.png", 0)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_folder(tmp_path / "pets", size=(4, 4))
    assert "no images of their own" not in caplog.text


SPLITS_RENAMED = {  # Kaggle downloads: splits under names of their own, one folder down
    "cat-and-dog": ("training_set/training_set", "test_set/test_set"),
    "images-inside": ("training_set/images", "test_set/images"),
    "intel": ("seg_train/seg_train", "seg_test/seg_test"),
    "plain": ("train_set", "TestSet"),
}


@pytest.mark.parametrize("url", [False, True])
@pytest.mark.parametrize("layout", sorted(SPLITS_RENAMED))
def test_split_folders_under_other_names_are_refused_not_read_as_classes(tmp_path, url, layout):
    # training_set/training_set/{cats,dogs} beside test_set/test_set/{cats,dogs} read as the
    # classes 'test_set' and 'training_set': every image labelled by its split, no word said
    root = tmp_path / "data"
    for inner in SPLITS_RENAMED[layout]:
        for c in ("cats", "dogs"):
            _tiny(root / inner / c / "a.png", 0)
    if layout == "intel":  # and its unlabelled seg_pred/seg_pred/*.jpg
        _tiny(root / "seg_pred" / "seg_pred" / "p.png", 0)
    where = _as_url(root, f"memory://daskimg-renamed-{layout}/data") if url else root
    try:
        # the oracle: the folders of images, as os.walk finds them, two kinds per split
        found = {Path(d).name for d, _, files in os.walk(root) if files}
        assert {"cats", "dogs"} <= found
        first = next(i for i in SPLITS_RENAMED[layout] if i.lower().startswith(("train", "seg_tr")))
        with pytest.raises(ValueError, match="named like splits") as e:
            di.from_folder(where, size=(4, 4))
        assert f"only the class folders cats/, dogs/ under '{where}/{first}'" in str(e.value)
        # classes given: read as those classes (the escape for a dataset that means it)
        tops = sorted(os.listdir(root))
        assert di.from_folder(where, size=(4, 4), classes=tops).classes == tuple(tops)
        if not url:  # and on the command line
            out = tmp_path / "out"
            argv = ["ingest", str(root), str(out), "--size", "4", "4", "--valid", "0"]
            assert main([*argv, "--test", "0"]) == 2
            assert main([*argv, "--test", "0", "--classes", *tops]) == 0
            assert di.open_zarr(out / "train.zarr.zip").classes == tuple(tops)
    finally:
        if url:
            pytest.importorskip("fsspec").filesystem("memory").rm(
                f"/daskimg-renamed-{layout}", recursive=True
            )
    # one split word; two, with images of their own: classes as before
    trees = {
        "vehicles": (("train_station", "indoor"), ("train_station", "outdoor"), ("bus", ".")),
        "sets": (("train_set", "."), ("test_set", "."), ("test_set", "more")),
        # (review) two split words, but a class without one beside them: classes
        "objects": (("bullet_train", "seq1"), ("bullet_train", "seq2"), ("test_tube", "."),
                    ("car", ".")),
    }  # fmt: skip
    for name, tree in trees.items():
        for c, inner in tree:
            _tiny(tmp_path / name / c / inner / "a.png", 0)
        got = di.from_folder(tmp_path / name, size=(4, 4)).classes
        assert got == tuple(sorted(os.listdir(tmp_path / name)))


def test_class_folders_named_like_one_split_twice_are_classes(tmp_path):
    for c in ("cat", "test", "testing"):  # no train/: these are three classes
        _tiny(tmp_path / c / "a.png", 0)
    assert di.from_folder(tmp_path, size=(4, 4)).classes == ("cat", "test", "testing")
    _tiny(tmp_path / "train" / "cat" / "b.png", 0)  # now splits: test/ and testing/ clash
    with pytest.raises(ValueError, match="holds both 'test' and 'testing'"):
        di.from_folder(tmp_path, size=(4, 4))


def _split_tree(root: Path, splits: dict[str, tuple[str, ...]]) -> None:
    from PIL import Image

    for split, classes in splits.items():
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (6, 6), (k, 0, 0)).save(root / split / c / f"{split}_{c}.png")


def _by_folder(ds) -> dict[str, str]:
    """Each sample's class name as its labels say, keyed by the folder it lies in."""
    return {
        Path(p).parent.name: ds.classes[int(i)] for p, i in zip(ds.paths, ds.labels, strict=True)
    }


def test_a_split_folder_read_on_its_own_numbers_classes_as_train_does(tmp_path, caplog):
    # from_folder("data/valid") with valid/ lacking a class: c was 1 in valid, 2 in train
    _split_tree(tmp_path, {"train": ("a", "b", "c"), "valid": ("a", "c"), "test": ("b",)})
    train_names = sorted(os.listdir(tmp_path / "train"))  # the oracle: the folder names
    train = di.from_folder(tmp_path / "train", size=(6, 6))
    assert list(train.classes) == train_names
    for split in ("valid", "test"):
        with caplog.at_level(logging.INFO, logger="daskimg"):
            ds = di.from_folder(tmp_path / split, size=(6, 6))
        assert (
            list(ds.classes) == train_names
            and "numbered with the classes of the splits beside it" in caplog.text
        )
        got = {Path(p).parent.name: int(i) for p, i in zip(ds.paths, ds.labels, strict=True)}
        assert got == {c: train_names.index(c) for c in os.listdir(tmp_path / split)}
        back = di.open_zarr(di.to_zarr(ds, tmp_path / f"{split}.zarr.zip"))
        assert list(back.classes) == train_names and _by_folder(back) == {c: c for c in got}
    # classes= chooses; a class folder outside them is refused
    ds = di.from_folder(tmp_path / "valid", size=(6, 6), classes=["c", "a", "z"])
    got = {Path(p).parent.name: int(i) for p, i in zip(ds.paths, ds.labels, strict=True)}
    assert got == {"c": 0, "a": 1} and ds.classes == ("c", "a", "z")
    with pytest.raises(ValueError, match=r"not among the classes given: 'c'"):
        di.from_folder(tmp_path / "valid", size=(6, 6), classes=["a", "b"])
    cwd = os.getcwd()
    try:  # the folder given as ".", from inside it
        os.chdir(tmp_path / "valid")
        assert list(di.from_folder(".", size=(6, 6)).classes) == train_names
    finally:
        os.chdir(cwd)


def test_a_split_folder_with_a_class_train_lacks_is_refused_read_on_its_own(tmp_path):
    _split_tree(tmp_path, {"train": ("a", "b"), "valid": ("a", "d")})
    with pytest.raises(
        ValueError, match=r"valid' holds class folder\(s\) that .*train' beside it does not: 'd'"
    ):
        di.from_folder(tmp_path / "valid", size=(6, 6))
    # train/ read on its own took valid/d as a class too (a class it never trains on);
    # reading the root refuses this tree, and so does reading any split of it on its own
    with pytest.raises(ValueError, match=r"train' is a split folder of .* not: 'd'"):
        di.from_folder(tmp_path / "train", size=(6, 6))
    assert di.from_folder(tmp_path / "train", size=(6, 6), classes=["a", "b"]).classes == (
        "a",
        "b",
    )
    # an evaluation set without train/: the union over its splits
    shutil.rmtree(tmp_path / "train")
    (tmp_path / "test" / "b").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (6, 6)).save(tmp_path / "test" / "b" / "x.png")
    ds = di.from_folder(tmp_path / "test", size=(6, 6))
    assert ds.classes == ("a", "b", "d") and ds.labels.tolist() == [1]
    # a folder that is no split of its parent keeps its own classes
    _split_tree(tmp_path / "other", {"cats": ("a", "c")})
    assert di.from_folder(tmp_path / "other" / "cats", size=(6, 6)).classes == ("a", "c")


def test_a_split_folder_read_on_its_own_at_a_url_numbers_classes_as_train_does(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    _split_tree(tmp_path, {"train": ("a", "b", "c"), "valid": ("a", "c"), "test": ("b", "d")})
    fs = fsspec.filesystem("memory")
    url = "memory://daskimg-test-split-alone/data"
    for f in sorted(tmp_path.rglob("*.png")):
        fs.pipe(f"{url}/{f.relative_to(tmp_path).as_posix()}", f.read_bytes())
    try:
        with pytest.raises(ValueError, match=r"test' holds class folder\(s\) that .* not: 'd'"):
            di.from_folder(f"{url}/test", size=(6, 6))
        for split in ("train", "valid"):  # test/d refuses the root, and each split of it
            with pytest.raises(ValueError, match=rf"{split}' is a split folder of .* not: 'd'"):
                di.from_folder(f"{url}/{split}", size=(6, 6))
        fs.rm(f"{url}/test/d", recursive=True)
        shutil.rmtree(tmp_path / "test" / "d")
        # the oracle: the class folders of every split, as reading the root takes them
        every = sorted({c for s in ("train", "valid", "test") for c in os.listdir(tmp_path / s)})
        ds = di.from_folder(f"{url}/valid", size=(6, 6))
        assert list(ds.classes) == every and every == ["a", "b", "c"]
        got = {Path(p).parent.name: int(i) for p, i in zip(ds.paths, ds.labels, strict=True)}
        assert got == {c: every.index(c) for c in os.listdir(tmp_path / "valid")}
        assert list(di.from_folder(f"{url}/train", size=(6, 6)).classes) == every
    finally:
        fs.rm("/daskimg-test-split-alone", recursive=True)


def test_zarr_store_folders_beside_the_class_folders_are_no_classes(tmp_path):
    # stores written as folders into the source (to_zarr(..., "data/train.zarr")) were
    # read as empty classes on the next read, shifting nothing but adding classes
    src = tmp_path / "data"
    di.testing.make_image_folder(src, n=6, size=(8, 8), classes=("cat", "dog"))
    first = di.from_folder(src, size=(8, 8))
    di.to_zarr(first, src / "train.zarr")
    assert (src / "train.zarr" / "zarr.json").is_file()
    again = di.from_folder(src, size=(8, 8))
    assert again.classes == ("cat", "dog")  # the oracle: the class folders made
    assert again.paths.tolist() == first.paths.tolist()


def test_a_split_folder_read_on_its_own_takes_empty_class_folders_as_the_root_does(tmp_path):
    # an empty test/a: reading the root gave ('a', 'b', 'c'), valid/ alone ('b', 'c'), so b
    # was 1 in one and 0 in the other; test/ alone was refused
    _split_tree(tmp_path, {"train": ("b", "c"), "valid": ("b", "c")})
    (tmp_path / "test" / "a").mkdir(parents=True)
    root = di.from_folder(tmp_path, size=(6, 6))
    for split in ("train", "valid"):
        alone = di.from_folder(tmp_path / split, size=(6, 6))
        assert alone.classes == root.classes
        np.testing.assert_array_equal(alone.labels, root.split()[split].labels)


def test_a_split_read_on_its_own_leaves_out_what_the_root_leaves_out(tmp_path):
    # a flat test/ holding a folder of other files, and a link in valid/ to a class folder
    # of train/: the root read takes neither as a class, the split read alone took both
    from PIL import Image

    _split_tree(tmp_path, {"train": ("cat", "dog"), "valid": ("cat", "dog")})
    (tmp_path / "test" / "aux").mkdir(parents=True)
    Image.new("RGB", (6, 6)).save(tmp_path / "test" / "0001.png")
    (tmp_path / "test" / "aux" / "ids.csv").write_text("id\n")
    (tmp_path / "valid" / "animal").symlink_to(tmp_path / "train" / "cat")
    root = di.from_folder(tmp_path, size=(6, 6))
    assert root.classes == ("cat", "dog")  # the oracle for the split read alone
    alone = di.from_folder(tmp_path / "train", size=(6, 6))
    assert alone.classes == root.classes
    np.testing.assert_array_equal(alone.labels, root.split()["train"].labels)
    # valid/ alone: the link leads out of it, so 'animal' is a class there, one train lacks
    with pytest.raises(ValueError, match=r"does not: 'animal'"):
        di.from_folder(tmp_path / "valid", size=(6, 6))


def test_a_split_read_on_its_own_reads_its_parent_as_told_and_quietly(tmp_path, caplog):
    # the parent was read with stray='raise' whatever was given: a stray folder beside the
    # splits made that read fail, and the split numbered its classes by itself (b was 0 alone,
    # 1 from the root); the parent's notes about other folders were logged as the split's
    import logging

    data = tmp_path / "data"
    di.testing.make_image_folder(data / "train", n=3, size=(8, 8), classes=("a", "b", "c"))
    di.testing.make_image_folder(data / "valid", n=2, size=(8, 8), classes=("b", "c"))
    di.testing.make_image_folder(data / "notes", n=1, size=(8, 8), classes=("x",))
    root = di.from_folder(data, size=(8, 8), stray="ignore").split()
    alone = di.from_folder(data / "valid", size=(8, 8), stray="ignore")
    assert alone.classes == root["valid"].classes == ("a", "b", "c")
    np.testing.assert_array_equal(alone.labels, root["valid"].labels)
    shutil.rmtree(data / "notes")
    first = sorted((data / "train" / "b").iterdir())[0]
    (data / "valid" / "b" / "dup.png").symlink_to(first)  # a link out of the split
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        alone = di.from_folder(data / "valid", size=(8, 8))
    assert any(str(p).endswith("dup.png") for p in alone.paths)
    assert "left out" not in caplog.text  # it is read, and said not to be


def test_a_split_read_alone_beside_a_stray_folder_numbers_classes_as_the_splits(tmp_path, caplog):
    # data/{train,valid,checkpoints}: reading data is refused (checkpoints/ is no split), and
    # data/valid read alone numbered its classes by itself (c: 2 in train, 1 in valid)
    data = tmp_path / "data"
    _split_tree(data, {"train": ("a", "b", "c"), "valid": ("a", "c")})
    (data / "checkpoints").mkdir()
    (data / "checkpoints" / "model.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match="which are no split"):
        di.from_folder(data, size=(6, 6))
    every = sorted(os.listdir(data / "train"))  # the oracle: the split folders' class folders
    ds = di.from_folder(data / "valid", size=(6, 6))
    assert list(ds.classes) == every
    assert _by_folder(ds) == {c: c for c in os.listdir(data / "valid")}
    # both val/ and valid/: no numbering the splits agree on, and that is said
    _split_tree(data, {"val": ("c",)})
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(data / "val", size=(6, 6))
    assert ds.classes == ("c",)
    assert "its classes are numbered on their own" in caplog.text
    assert "holds both 'val' and 'valid'" in caplog.text


def test_a_class_folder_holding_no_image_is_a_class_at_a_url_as_on_disk(tmp_path, caplog):
    # train/cat/ with only a .DS_Store: a class (empty, said) on disk, none at a URL, where
    # dog was 1 instead of 2
    _tiny(tmp_path / "train" / "bird" / "1.png", 0)
    _tiny(tmp_path / "train" / "dog" / "2.png", 0)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    _tiny(tmp_path / "test" / "dog" / "3.png", 0)
    url = _as_url(tmp_path, "memory://daskimg-test-empty-class/data")
    try:
        with caplog.at_level(logging.WARNING, logger="daskimg"):
            disk = di.from_folder(tmp_path, size=(4, 4))
            there = di.from_folder(url, size=(4, 4))
        assert disk.classes == there.classes == tuple(sorted(os.listdir(tmp_path / "train")))
        np.testing.assert_array_equal(disk.labels, there.labels)
        assert caplog.text.count("class folder(s) without images: 'cat'") == 2
    finally:
        pytest.importorskip("fsspec").filesystem("memory").rm(
            "/daskimg-test-empty-class", recursive=True
        )


def test_a_link_to_a_folder_not_there_is_named_as_such(tmp_path, caplog):
    # bird -> a drive not mounted: the class was gone, logged as a file without an image ending
    for c in ("ant", "cat"):
        _tiny(tmp_path / c / "a.png", 0)
    (tmp_path / "bird").symlink_to("/nonexistent-daskimg-drive/birds")
    (tmp_path / "cat" / "more").symlink_to("/nonexistent-daskimg-drive/more-cats")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_folder(tmp_path, size=(4, 4))
    assert ds.classes == ("ant", "cat")
    assert "left out 2 link(s) whose target does not exist" in caplog.text
    assert f"'{tmp_path / 'bird'}' -> '/nonexistent-daskimg-drive/birds'" in caplog.text
    assert "not an image ending" not in caplog.text


@pytest.mark.parametrize(
    "inside", ["train/val", "train/test", "val"], ids=["val-in-train", "test-in-train", "no-train"]
)
def test_a_split_folder_one_level_too_deep_is_refused_not_read_as_a_class(tmp_path, inside):
    # train/{cat,dog,val/{cat,dog}}: classes were cat, dog, val, every validation image in
    # train labelled 'val', without a word
    from PIL import Image

    root = tmp_path / "data"
    top = "train" if inside.startswith("train") else ""
    other = "valid" if inside == "train/test" else "test"
    for folder in [top, inside] + ([other] if top else []):
        for k, c in enumerate(("cat", "dog")):
            (root / folder / c).mkdir(parents=True)
            name = folder.replace("/", "_") or "root"
            Image.new("RGB", (6, 6), (k, 0, 0)).save(root / folder / c / f"{name}_{c}.png")
    with pytest.raises(ValueError, match=rf"{inside.split('/')[-1]}' is named like a split and"):
        di.from_folder(root, size=(6, 6))
    assert main(["ingest", str(root), str(tmp_path / "out"), "--size", "6", "6"]) != 0
    # the layout the message asks for reads right: every image under its own class folder
    shutil.move(root / inside, tmp_path / "moved")
    shutil.move(tmp_path / "moved", root / inside.split("/")[-1])
    if not top:
        (root / "train").mkdir()
        for c in ("cat", "dog"):
            shutil.move(root / c, root / "train" / c)
    ds = di.from_folder(root, size=(6, 6))
    assert ds.classes == ("cat", "dog") and len(ds) == (6 if top else 4)
    for p, i in zip(ds.paths, ds.labels, strict=True):  # the oracle: the folder it lies in
        assert Path(p).parent.name == ds.classes[int(i)], p


@given(
    st.text(alphabet=st.sampled_from(list("ab.JjPpGgEeNn _é")), max_size=12)
    | st.sampled_from(sorted(f"{p}{e}" for e in IMAGE_EXTENSIONS for p in ("", ".", "x", "x.")))
)
@settings(max_examples=400, deadline=None)
def test_an_image_is_named_by_its_ending_as_splitext_says(name):
    """from_folder's inlined test of a file name: a visible file whose ending (as
    ``os.path.splitext`` gives it) is an image's, any case."""
    expected = not name.startswith(".") and posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    assert _is_image(name) == expected


def test_a_set_of_several_split_folders_is_not_stored_or_fed_as_one(tmp_path):
    # split(fractions) refused to mix train/valid/test folders, but to_zarr(ds) stored them
    # as one set and BatchIterator(ds) fed them, test images in training, without a word
    _split_tree(tmp_path / "src", {"train": ("a", "b"), "valid": ("a", "b"), "test": ("a",)})
    ds = di.from_folder(tmp_path / "src", size=(4, 4))
    mixed = r"predefined splits \['test', 'train', 'valid'\] \(split folders\); {} them"
    with pytest.raises(ValueError, match=mixed.format("storing")):
        di.to_zarr(ds, tmp_path / "all.zarr.zip")
    assert not (tmp_path / "all.zarr.zip").exists()
    with pytest.raises(ValueError, match=mixed.format("feeding")):  # (every adapter's source)
        di.BatchIterator(ds, batch_size=2)
    parts = ds.split()
    for name, part in parts.items():  # each split alone is stored, from its own folder
        out = di.open_zarr(di.to_zarr(part, tmp_path / f"{name}.zarr.zip", split=name))
        assert {p.split("/")[0] for p in out.paths} == {name}  # oracle: the folders
    # divided anew on purpose (resplit=True): each part is stored and fed
    anew = ds.split({"train": 0.6, "test": 0.4}, resplit=True, seed=0)
    for name, part in anew.items():
        assert len(di.open_zarr(di.to_zarr(part, tmp_path / f"re-{name}.zarr.zip"))) == len(part)
        assert sum(len(y) for _, y in di.BatchIterator(part, batch_size=2)) == len(part)
    ds.source_splits = None  # mixing them on purpose
    assert len(di.open_zarr(di.to_zarr(ds, tmp_path / "all.zarr.zip"))) == 5
    assert sum(len(y) for _, y in di.BatchIterator(ds, batch_size=2)) == 5


def test_an_exclude_naming_no_folder_is_refused(tmp_path):
    # exclude="data/rejected" (the folder is Rejected) or a file was ignored without a word:
    # the folder meant to be left out was read as a class
    root = tmp_path / "data"
    di.testing.make_image_folder(root, n=6, size=(8, 8), classes=("cat", "dog", "Rejected"))
    kept = di.from_folder(root, size=(8, 8), exclude=root / "Rejected")
    assert kept.classes == ("cat", "dog")  # the oracle: the folders made, less the one
    assert di.from_folder(root, size=(8, 8), exclude="Rejected").classes == ("cat", "dog")
    with pytest.raises(ValueError, match=r"names '.*rejected', which is no folder.*'Rejected'"):
        di.from_folder(root, size=(8, 8), exclude=root / "rejected")
    with pytest.raises(ValueError, match=r"names 'rejected', which is no folder"):
        di.from_folder(root, size=(8, 8), exclude=["Rejected", "rejected"])
    a_file = next((root / "Rejected").iterdir())
    with pytest.raises(ValueError, match=r"takes folders, and '.*' is a file"):
        di.from_folder(root, size=(8, 8), exclude=a_file)
    fsspec = pytest.importorskip("fsspec")
    fs, url = fsspec.filesystem("memory"), "memory://daskimg-test-exclude/data"
    for f in sorted(root.rglob("*.png")):
        fs.pipe(f"{url}/{f.relative_to(root).as_posix()}", f.read_bytes())
    try:
        assert di.from_folder(url, size=(8, 8), exclude="Rejected").classes == ("cat", "dog")
        assert di.from_folder(url, size=(8, 8), exclude=f"{url}/Rejected").classes == (
            "cat",
            "dog",
        )
        with pytest.raises(ValueError, match=r"names 'rejected', which is no folder"):
            di.from_folder(url, size=(8, 8), exclude="rejected")
    finally:
        fs.rm("/daskimg-test-exclude", recursive=True)


def test_a_file_url_root_reads_the_set_its_path_reads(tmp_path, caplog):
    # file://root went through fsspec's local file system: a linked class folder was dropped
    # (taken as a file without an image ending) and a file linked into another class read
    # twice, under two labels; the oracle: the same tree read by its path
    root, ext = tmp_path / "data", tmp_path / "elsewhere"
    di.testing.make_image_folder(root, n=4, size=(8, 8), classes=("cat", "dog"))
    di.testing.make_image_folder(ext, n=2, size=(8, 8), classes=("bird",))
    (root / "bird").symlink_to(ext / "bird")
    cat = sorted((root / "cat").iterdir())[0]
    (root / "dog" / "leak.png").symlink_to(cat)
    by_path = di.from_folder(root, size=(8, 8))
    assert by_path.classes == ("bird", "cat", "dog") and "dog/leak.png" not in by_path.paths
    by_url = di.from_folder(f"file://{root}", size=(8, 8))
    assert by_url.classes == by_path.classes
    assert by_url.paths.tolist() == by_path.paths.tolist()
    np.testing.assert_array_equal(by_url.labels, by_path.labels)
    np.testing.assert_array_equal(by_url.images.compute(), by_path.images.compute())
    # from_csv: a file named twice (once through a link) is refused, as with a path root
    (root / "labels.csv").write_text(
        f"path,label\n{cat.relative_to(root).as_posix()},cat\ndog/leak.png,dog\n"
    )
    for r in (root, f"file://{root}"):
        with pytest.raises(ValueError, match="the same file"):
            di.from_csv(f"file://{root}/labels.csv", root=r, size=(8, 8))
    # imread: the pattern's files
    assert di.imread(f"file://{root}/cat/*.png", size=(8, 8)).shape[0] == 2


@pytest.mark.parametrize("url", [False, True])
def test_classes_given_read_a_class_named_like_a_split_as_that_class(tmp_path, url, capsys):
    # CIFAR-100 has a class 'train': classes= (documented to read split-named folders as the
    # classes named) was refused with advice to rename the folder, and with stray='ignore'
    # train/ was read as an unlabelled split, apple/ and bus/ left out (the CLI: exit 0)
    from PIL import Image

    root = tmp_path / "src"
    classes = ["apple", "bus", "train"]
    for k, c in enumerate(classes):
        for j in range(3):
            _tiny(root / c / f"{j}.png", 10 * k + j)
    where = _as_url(root, f"memory://daskimg-test-class-train-{tmp_path.name}") if url else root
    for stray in ("raise", "ignore"):
        ds = di.from_folder(where, size=(4, 4), classes=classes, stray=stray)
        assert list(ds.classes) == classes and ds.source_splits is None
        # the oracle: each file's folder and its own pixels
        walked = sorted(f.relative_to(root).as_posix() for f in root.rglob("*.png"))
        assert sorted(ds.paths) == walked
        images = ds.images.compute()
        for p, label, img in zip(ds.paths, ds.labels, images, strict=True):
            assert classes[label] == p.split("/")[0]
            assert (img == np.asarray(Image.open(root / p))[..., None]).all()
    if url:
        return
    out = tmp_path / "out"
    argv = ["ingest", str(root), str(out), "--size", "4", "4", "--classes", *classes]
    assert main([*argv, "--valid", "0", "--test", "0"]) == 0
    stored = di.open_zarr(out / "train.zarr.zip")
    assert list(stored.classes) == classes and len(stored.paths) == 9
    assert "named like splits" not in capsys.readouterr().err
    # without classes= it is still refused, and the message says classes= is the way
    with pytest.raises(ValueError, match=r"pass classes= naming every class"):
        di.from_folder(root, size=(4, 4))


@pytest.mark.parametrize("url", [False, True])
def test_classes_given_keep_split_folders_that_hold_class_folders_and_refuse_strays(tmp_path, url):
    # the rule above read a tree holding only train/<class>/ with a class 'train' as the
    # one class 'train' (every label 2); and a misspelt class, or a notes/ folder beside
    # the classes, with stray='ignore' made train/ an unlabelled split, other classes lost
    classes = ["apple", "bicycle", "train"]
    split = tmp_path / "split"
    for k, c in enumerate(classes):
        for j in range(2):
            _tiny(split / "train" / c / f"{j}.png", 10 * k + j)
    where = _as_url(split, f"memory://daskimg-test-train-only-{tmp_path.name}") if url else split
    ds = di.from_folder(where, size=(4, 4), classes=classes)
    assert ds.source_splits is not None  # the split train/, its classes inside
    assert [classes[i] for i in ds.labels] == [p.split("/")[1] for p in ds.paths]  # the oracle
    assert sorted(ds.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    flat = tmp_path / "flat"
    for k, c in enumerate(classes):
        for j in range(2):
            _tiny(flat / c / f"{j}.png", 10 * k + j)
    (flat / "notes").mkdir()
    (flat / "notes" / "README.txt").write_text("x")
    where = _as_url(flat, f"memory://daskimg-test-flat-notes-{tmp_path.name}") if url else flat
    for named, stray in ((["apple", "bicycl", "train"], "bicycle"), (classes, "notes")):
        for how in ("raise", "ignore"):
            with pytest.raises(ValueError, match=rf"but [^;]*'{stray}'[^;]* not among the"):
                di.from_folder(where, size=(4, 4), classes=named, stray=how)
    # train/ holding class folders named otherwise than given (train/Apple/): still a
    # split, refused for its class names, not read as the one class 'train' (every label
    # the same, as the second rule did)
    cased = tmp_path / "cased"
    for c in ("Apple", "Bus"):
        _tiny(cased / "train" / c / "0.png", 1)
    where = _as_url(cased, f"memory://daskimg-test-cased-{tmp_path.name}") if url else cased
    with pytest.raises(ValueError, match=r"'Apple' is 'apple' there"):
        di.from_folder(where, size=(4, 4), classes=["apple", "bus", "train"])
    # the class train/ with its images and an empty folder left in it: read alike on disk
    # and at a URL (which has no empty folders)
    left = tmp_path / "left"
    _tiny(left / "cat" / "a.png", 1)
    _tiny(left / "train" / "a.png", 2)
    (left / "train" / "cat").mkdir()
    where = _as_url(left, f"memory://daskimg-test-left-{tmp_path.name}") if url else left
    ds = di.from_folder(where, size=(4, 4), classes=["cat", "train"])
    assert [ds.classes[i] for i in ds.labels] == [p.split("/")[0] for p in ds.paths]


def test_a_root_folder_named_in_another_encoding_is_ingested(tmp_path):
    """A root whose name is not UTF-8 (donn\\xe9es, from an old zip or a Windows share): the
    files are listed and their stored paths are plain, but to_zarr failed with a bare
    UnicodeEncodeError naming nothing (the fingerprint encoded the full paths). The oracle:
    Pillow's decode of each file, found by its bytes name."""
    from PIL import Image

    root = os.fsencode(tmp_path) + b"/donn\xe9es"
    want = {}
    for c, shade in ((b"cat", 40), (b"dog", 200)):
        os.makedirs(root + b"/" + c)
        for i in range(2):
            name = root + b"/" + c + b"/%d.png" % i
            Image.new("RGB", (6, 6), (shade + i, 0, 0)).save(os.fsdecode(name))
            want[f"{c.decode()}/{i}.png"] = np.asarray(Image.open(os.fsdecode(name)))
    ds = di.from_folder(os.fsdecode(root), size=(6, 6))
    out = di.to_zarr(ds, tmp_path / "t.zarr.zip")
    back = di.open_zarr(out)
    images = back.images.compute()
    assert sorted(back.paths) == sorted(want)
    for path, image, label in zip(back.paths, images, back.labels, strict=True):
        np.testing.assert_array_equal(image, want[path])
        assert back.classes[label] == path.split("/")[0]
    assert main(["ingest", os.fsdecode(root), str(tmp_path / "out"), "--size", "6", "6",
                 "--valid", "0", "--test", "0"]) == 0  # fmt: skip
    assert main(["ingest", os.fsdecode(root), str(tmp_path / "out"), "--size", "6", "6",
                 "--valid", "0", "--test", "0"]) == 0  # a re-run keeps it  # fmt: skip
