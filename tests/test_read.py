from __future__ import annotations

import math
import shutil
from pathlib import Path

import dask
import numpy as np
import pytest

import daskimg as di
from daskimg.errors import DecodeError, NoImagesFoundError
from daskimg.read.decode import DecodeSpec, decode_file


def test_imread_is_lazy_and_opens_no_file(tmp_path):
    # paths that do not exist: building the array must not touch them
    paths = [str(tmp_path / f"missing_{i}.jpg") for i in range(1000)]
    x = di.imread(paths, size=(8, 8), chunks=64)
    assert x.shape == (1000, 8, 8, 3)
    assert x.dtype == np.uint8
    # one task per block of files, not per file
    assert len(dict(x.__dask_graph__())) == math.ceil(1000 / 64)
    with pytest.raises(DecodeError, match=r"missing_0\.jpg"):
        x[:1].compute()


def test_imread_matches_per_file_decode(image_folder):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    x = di.imread(str(image_folder / "**" / "*.png"), size=(16, 20), chunks=5)
    spec = DecodeSpec(size=(16, 20))
    expected = np.stack([decode_file(p, spec) for p in paths])
    dask.array.utils.assert_eq(expected, x)
    assert x.numblocks[0] == math.ceil(len(paths) / 5)


def test_imread_explicit_list_keeps_order(image_folder):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))[::-1][:7]
    x = di.imread(paths, size=(8, 8), channels=1).compute()
    spec = DecodeSpec(size=(8, 8), channels=1)
    assert x.shape == (7, 8, 8, 1)
    np.testing.assert_array_equal(x, np.stack([decode_file(p, spec) for p in paths]))


def test_imread_no_match_names_pattern(tmp_path):
    with pytest.raises(NoImagesFoundError, match=r"nothing_here/\*\.jpg"):
        di.imread(str(tmp_path / "nothing_here" / "*.jpg"), size=(8, 8))
    with pytest.raises(NoImagesFoundError):
        di.imread([], size=(8, 8))


def test_a_folder_named_with_glob_characters_is_said_with_how_to_escape_it(tmp_path):
    # 'b [2020]/*.png': '[2020]' is a character set, so nothing matched, and the message
    # said "check the path" of a folder that is there
    import glob

    from PIL import Image

    folder = tmp_path / "b [2020]"
    folder.mkdir()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(folder / "x.png")
    with pytest.raises(NoImagesFoundError, match=r"b \[2020\]' is there.*glob\.escape\("):
        di.imread(str(folder / "*.png"), size=(4, 4))
    escaped = glob.escape(str(folder)) + "/*.png"  # what it says to do works
    assert di.imread(escaped, size=(4, 4)).compute()[0, 0, 0, 0] == 9
    with pytest.raises(NoImagesFoundError, match=r"check the path") as e:  # no .jpg there
        di.imread(str(folder / "*.jpg"), size=(4, 4))
    assert "glob.escape" not in str(e.value)


def test_imread_validates_arguments(image_folder):
    pattern = str(image_folder / "**" / "*.png")
    with pytest.raises(ValueError, match="on_error"):
        di.imread(pattern, size=(8, 8), on_error="ignore")
    with pytest.raises(ValueError, match="chunks"):
        di.imread(pattern, size=(8, 8), chunks=0)


def test_imread_skip_leaves_bad_files_out(image_folder):
    bad = image_folder / "bee" / "broken.png"
    bad.write_bytes(b"this is not an image")
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    x = di.imread(paths, size=(8, 8), on_error="skip", chunks=4)
    assert math.isnan(x.shape[0])
    got = x.compute()
    good = [p for p in paths if p != str(bad)]
    spec = DecodeSpec(size=(8, 8))
    np.testing.assert_array_equal(got, np.stack([decode_file(p, spec) for p in good]))
    with pytest.raises(DecodeError, match=r"broken\.png"):
        di.imread(paths, size=(8, 8)).compute()


def test_imread_volumes(tmp_path):
    files = di.testing.make_volume_folder(tmp_path, n=3, shape=(6, 7, 8), seed=0)
    v = di.imread([str(f) for f in files], size=(4, 4, 4), dtype="float32")
    assert v.shape == (3, 4, 4, 4, 1)
    assert v.compute().shape == (3, 4, 4, 4, 1)


def test_imread_on_distributed(image_folder, client):
    pattern = str(image_folder / "**" / "*.png")
    x = di.imread(pattern, size=(8, 8), chunks=6)
    local = x.compute(scheduler="threads")
    remote = client.compute(x).result()
    np.testing.assert_array_equal(local, remote)


def test_imread_pattern_extension_matches_any_letter_case(tmp_path):
    """'*.jpg' left IMG_2.JPG out without a word (from_folder reads it): the extension of a
    pattern matches in any case; the rest of the pattern as glob has it."""
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "B").mkdir()
    names = ["a/1.jpg", "a/2.JPG", "a/3.Jpg", "B/4.jpg"]
    for k, name in enumerate(names):
        Image.new("RGB", (6, 4), (k * 40, 0, 0)).save(tmp_path / name, quality=95)
    Image.new("RGB", (6, 4)).save(tmp_path / "a" / "5.jpeg")
    x = di.imread(str(tmp_path / "**" / "*.jpg"), size=(4, 6)).compute()
    oracle = sorted(str(tmp_path / n) for n in names)  # glob's sorted order
    for img, path in zip(x, oracle, strict=True):
        np.testing.assert_array_equal(img, np.asarray(Image.open(path).convert("RGB")))
    with pytest.raises(NoImagesFoundError):
        di.imread(str(tmp_path / "b" / "*.jpg"), size=(4, 6))  # folder names keep their case


def test_imread_takes_a_file_name_with_glob_characters_as_it_is(tmp_path):
    # 'x[1].png' was a pattern matching 'x1.png': another file read, without a word
    a, b = di.testing.make_image(seed=1), di.testing.make_image(seed=2)
    a.save(tmp_path / "x[1].png")
    b.save(tmp_path / "x1.png")
    got = di.imread(str(tmp_path / "x[1].png"), size=(8, 8)).compute()
    want = di.imread([str(tmp_path / "x[1].png")], size=(8, 8)).compute()
    other = di.imread([str(tmp_path / "x1.png")], size=(8, 8)).compute()
    assert got.shape[0] == 1 and np.array_equal(got, want) and not np.array_equal(got, other)


def test_imread_reads_each_file_once_through_folder_links(tmp_path, caplog):
    # '**' follows links to folders: cat/dogs -> ../dog and cat/up -> .. matched the two
    # files of the tree 122 times
    import logging

    di.testing.make_image(seed=1).save((tmp_path / "cat").mkdir() or tmp_path / "cat" / "a.png")
    di.testing.make_image(seed=2).save((tmp_path / "dog").mkdir() or tmp_path / "dog" / "b.png")
    (tmp_path / "cat" / "dogs").symlink_to(tmp_path / "dog")
    (tmp_path / "cat" / "up").symlink_to(tmp_path)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        x = di.imread(str(tmp_path / "**" / "*.png"), size=(8, 8))
    assert x.shape[0] == 2 and "reached again through a link" in caplog.text


def test_relative_paths_name_the_files_where_the_set_was_made(tmp_path, monkeypatch):
    # the files were opened when computed: after a chdir (a notebook's %cd) the same
    # relative names read another folder's files, under this folder's listing and classes
    from PIL import Image

    for where, seed in (("one", 1), ("two", 2)):
        di.testing.make_image_folder(tmp_path / where / "rel", n=4, size=(8, 8), seed=seed)
    monkeypatch.chdir(tmp_path / "one")
    ds = di.from_folder("rel", size=(8, 8))
    arr = di.imread("rel/*/*.png", size=(8, 8))
    listed = di.imread([f"rel/{p}" for p in ds.paths], size=(8, 8))
    monkeypatch.chdir(tmp_path / "two")
    for got in (ds.images.compute(), arr.compute(), listed.compute()):
        for path, image in zip(ds.paths, got, strict=True):
            with Image.open(tmp_path / "one" / "rel" / path) as im:  # the oracle: Pillow
                np.testing.assert_array_equal(image, np.asarray(im.convert("RGB")))
    di.to_zarr(ds, tmp_path / "s.zarr.zip")
    assert di.open_zarr(tmp_path / "s.zarr.zip").attrs["source"]["root"] == str(
        tmp_path / "one" / "rel"
    )


def test_imread_pattern_leaves_out_nas_thumbnails_and_recycle_bins(tmp_path, caplog, monkeypatch):
    # imread("syn/**/*.jpg") read Synology's @eaDir thumbnails (copies of the photos) and
    # its #recycle bin, which from_folder leaves out
    import logging
    import os

    root = tmp_path / "syn"
    di.testing.make_image_folder(root, n=4, size=(8, 8), classes=("cat", "dog"), fmt="jpg")
    photos = sorted(str(p) for p in root.rglob("*.jpg"))
    thumbs = root / "cat" / "@eaDir" / Path(photos[0]).name
    thumbs.mkdir(parents=True)
    (root / "#recycle" / "cat").mkdir(parents=True)
    for copy in (thumbs / "SYNOPHOTO_THUMB_M.jpg", root / "#recycle" / "cat" / "old.jpg"):
        copy.write_bytes(Path(photos[0]).read_bytes())
    monkeypatch.chdir(tmp_path)
    for pattern in ("syn/**/*.jpg", str(root / "**" / "*.jpg")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="daskimg"):
            got = di.read.files.expand_paths(pattern)
        assert got == photos  # the oracle: the photos os.walk finds outside those folders
        assert "left out 2 file(s) in folders systems keep" in caplog.text
    named = di.read.files.expand_paths("syn/cat/@eaDir/**/*.jpg")  # named in the pattern: read
    assert named == [os.path.join(tmp_path, "syn/cat/@eaDir", thumbs.name, "SYNOPHOTO_THUMB_M.jpg")]


def test_absolute_paths_read_when_the_working_folder_was_deleted(tmp_path, monkeypatch):
    # (review) os.getcwd() was called for every set: a deleted working folder made even
    # absolute patterns, lists and roots fail with a bare FileNotFoundError
    di.testing.make_image_folder(tmp_path / "imgs", n=2, size=(8, 8), classes=("a",))
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    files = sorted(str(p) for p in (tmp_path / "imgs").rglob("*.png"))
    assert di.imread(str(tmp_path / "imgs" / "*" / "*.png"), size=(8, 8)).shape[0] == 2
    assert di.imread(files, size=(8, 8)).shape[0] == 2
    assert len(di.from_folder(tmp_path / "imgs", size=(8, 8))) == 2


def test_imread_reads_a_system_folder_its_pattern_names(tmp_path, monkeypatch):
    # (review) '*/@eaDir/*.jpg' named the folder after a wildcard: every file was left out,
    # and 'no files match' did not say why
    di.testing.make_image_folder(tmp_path / "syn", n=2, size=(8, 8), classes=("cat",), fmt="jpg")
    thumbs = tmp_path / "syn" / "cat" / "@eaDir"
    thumbs.mkdir()
    (thumbs / "t.jpg").write_bytes(next((tmp_path / "syn" / "cat").glob("*.jpg")).read_bytes())
    monkeypatch.chdir(tmp_path)
    assert di.read.files.expand_paths("syn/*/@eaDir/*.jpg") == [str(thumbs / "t.jpg")]
    with pytest.raises(NoImagesFoundError, match=r"left out 1 file\(s\) in folders systems"):
        di.read.files.expand_paths("syn/**/@*/*.jpg")


def test_a_pattern_through_links_that_lead_back_up_returns_each_file_once(tmp_path, caplog):
    """Two links back to their own folder (``latest -> .`` beside another): glob follows
    every link, about 2**40 paths, and imread never returned. Such a link is not followed
    now, and said; a link to a folder elsewhere still is. The oracle: os.walk without
    links, and the file behind the outside link."""
    import logging
    import os

    from PIL import Image

    root = tmp_path / "root"
    (root / "cat" / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    for i, where in enumerate((root / "cat", root / "cat" / "sub", outside)):
        Image.new("RGB", (6, 6), (i * 80, 0, 0)).save(where / f"{i}.png")
    os.symlink(".", root / "cat" / "again")
    os.symlink(".", root / "cat" / "same")
    os.symlink("..", root / "cat" / "sub" / "up")
    os.symlink(outside, root / "cat" / "elsewhere")
    walked = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    want = sorted([*walked, str(root / "cat" / "elsewhere" / "2.png")])
    pattern = str(root / "**" / "*.png")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        paths = di.read.files.expand_paths(pattern)
        x = di.imread(pattern, size=(6, 6))
    assert paths == sorted(want)
    assert "it leads back to" in caplog.text and "again" in caplog.text
    # 'a//b' is 'a/b', as in glob (the first version took an empty part at the start for
    # the file system's root); the oracle: glob itself, in a tree without loops (glob
    # would follow them for ever)
    import glob

    plain = tmp_path / "plain"
    shutil.copytree(
        root / "cat", plain, symlinks=True, ignore=shutil.ignore_patterns("again", "same", "up")
    )
    before = os.getcwd()
    try:
        os.chdir(plain)
        for odd in ("**//*.png", "sub//*.png", "./**/*.png", "**"):
            got = [os.path.normpath(p) for p in di.read.files.expand_paths(odd)]
            want = [
                os.path.join(plain, os.path.normpath(p)) for p in glob.glob(odd, recursive=True)
            ]
            assert sorted(got) == sorted(p for p in want if not os.path.isdir(p)), odd
    finally:
        os.chdir(before)
    reds = [np.asarray(Image.open(p))[0, 0, 0] for p in paths]  # Pillow's, in path order
    np.testing.assert_array_equal(x.compute()[:, 0, 0, 0], reds)


def test_a_pattern_says_which_folder_it_cannot_list(tmp_path, monkeypatch):
    # glob leaves out a folder it cannot list without a word; from_folder names it. (The
    # tests may run as root, who lists every folder: the listing of b is refused here.)
    import errno
    import os

    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("RGB", (6, 6)).save(tmp_path / "a" / "0.png")
    Image.new("RGB", (6, 6)).save(tmp_path / "b" / "1.png")
    scandir = os.scandir

    def refusing(path="."):
        if os.path.basename(os.fspath(path).rstrip("/")) == "b":
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(PermissionError, match=r"cannot list the folder .*b'.*Permission denied"):
        di.imread(str(tmp_path / "**" / "*.png"), size=(6, 6))
    # a system folder (lost+found, root's on every ext4 disk) is left out unread: its files
    # would be left out anyway (the first version of this check refused every such disk)
    os.rename(tmp_path / "b", tmp_path / "lost+found")
    (tmp_path / "b").mkdir()
    scandir_b = refusing

    def refusing_system(path="."):
        if os.path.basename(os.fspath(path).rstrip("/")) == "lost+found":
            return scandir_b(os.path.join(os.path.dirname(os.fspath(path).rstrip("/")), "b"))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing_system)
    for pattern in ("**/*.png", "*/*.png"):
        assert di.read.files.expand_paths(str(tmp_path / pattern)) == [
            str(tmp_path / "a" / "0.png")
        ]


def test_a_pipe_or_device_named_like_an_image_is_named_not_left_out(tmp_path):
    """A named pipe or a link to a device matched by a pattern, in a folder of unlabelled
    images, or beside class folders was left out without a word (inside a class folder it
    was named). The oracle: os.listdir."""
    import os

    from PIL import Image

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        Image.new("RGB", (6, 6)).save(flat / f"{i}.png")
    os.mkfifo(flat / "2.png")
    os.symlink("/dev/zero", flat / "3.png")
    assert len(os.listdir(flat)) == 4
    assert di.imread(str(flat / "*.png"), size=(6, 6)).shape[0] == 4
    ds = di.from_folder(flat, size=(6, 6))
    assert sorted(ds.paths) == ["0.png", "1.png", "2.png", "3.png"]
    with pytest.raises(DecodeError, match=r"2\.png.*named pipe|named pipe.*2\.png"):
        ds.images.compute()
    classes = tmp_path / "classes"
    for c in ("cat", "dog"):
        (classes / c).mkdir(parents=True)
        Image.new("RGB", (6, 6)).save(classes / c / "a.png")
    os.mkfifo(classes / "stray.png")
    with pytest.raises(ValueError, match=r"stray\.png"):
        di.from_folder(classes, size=(6, 6))


def test_a_path_holding_a_nul_character_is_refused_naming_it(tmp_path):
    # read from damaged text, it failed when computed with a bare "embedded null byte"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"path 1 of the list, .*b\\x00\.png.*NUL character"):
        di.imread([tmp_path / "a.png", f"{tmp_path}/b\0.png"], size=(8, 8))
