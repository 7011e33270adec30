"""Volumes keep their dtype and values; show draws them with a percentile window."""

from __future__ import annotations

import logging
import re

import dask
import numpy as np
import pytest
import tifffile
import zarr

import daskimg as di
from daskimg.errors import DecodeError
from daskimg.read.decode import DecodeSpec
from daskimg.show import WINDOW, grid_figure, window
from daskimg.testing import make_volume, make_volume_folder


@pytest.fixture
def ct(tmp_path):
    """Four int16 CT-like scans in Hounsfield units, -1000 (air) .. 2000 (bone)."""
    return make_volume_folder(
        tmp_path / "ct", n=4, shape=(8, 10, 12), dtype="int16", value_range=(-1000, 2000)
    )


def test_int16_ct_stays_int16_with_its_values(ct):
    v = di.imread([str(p) for p in ct], size=(8, 10, 12))
    assert v.dtype == np.int16 and v.shape == (4, 8, 10, 12, 1)
    np.testing.assert_array_equal(v.compute()[..., 0], np.stack([np.load(p) for p in ct]))


def test_resized_int16_ct_matches_skimage(ct):
    from skimage.transform import resize

    v = di.imread([str(p) for p in ct], size=(5, 6, 7)).compute()
    assert v.dtype == np.int16
    for i, p in enumerate(ct):
        expected = resize(
            np.load(p).astype(np.float64),
            (5, 6, 7),
            order=1,
            mode="edge",
            anti_aliasing=True,
            preserve_range=True,
        )
        assert np.abs(v[i, ..., 0] - expected).max() <= 0.5 + 1e-3
        assert v[i].min() < 0  # air stays negative


def test_dtype_int16_is_accepted_and_narrower_dtypes_are_checked(ct, tmp_path):
    paths = [str(p) for p in ct]
    assert di.imread(paths, size=(8, 10, 12), dtype="int16").compute().dtype == np.int16
    # wider: a plain cast, no check needed
    np.testing.assert_array_equal(
        di.imread(paths, size=(8, 10, 12), dtype="int32").compute()[..., 0],
        np.stack([np.load(p) for p in ct]),
    )
    with pytest.raises(
        DecodeError,
        match=r"vol_0000\.npy.*span -1000\.\.2000, outside the uint8 range 0\.\.255; pass dtype='int16'",
    ):
        di.imread(paths, size=(8, 10, 12), dtype="uint8").compute()
    # a narrower dtype is fine when the values fit
    small = tmp_path / "small.npy"
    np.save(small, np.arange(60, dtype=np.int32).reshape(3, 4, 5) - 30)
    np.testing.assert_array_equal(
        di.imread([str(small)], size=(3, 4, 5), dtype="int8").compute()[0, ..., 0],
        np.arange(60).reshape(3, 4, 5) - 30,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_volumes_stay_float(tmp_path, dtype):
    vol = make_volume((6, 7, 8), seed=2, dtype=dtype, value_range=(-3.5, 1e4))
    np.save(tmp_path / "f.npy", vol)
    v = di.imread([str(tmp_path / "f.npy")], size=(6, 7, 8))
    assert v.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(v.compute()[0, ..., 0], vol)
    with pytest.raises(DecodeError, match=r"fractional values .* pass dtype='" + dtype):
        di.imread([str(tmp_path / "f.npy")], size=(6, 7, 8), dtype="int16").compute()


def test_whole_floats_fit_an_integer_dtype(tmp_path):
    np.save(tmp_path / "w.npy", np.full((2, 3, 4), -1000.0))
    got = di.imread([str(tmp_path / "w.npy")], size=(2, 3, 4), dtype="int16").compute()
    assert got.dtype == np.int16 and (got == -1000).all()


def test_the_first_file_sets_the_dtype_and_others_must_fit(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), np.int16))
    np.save(tmp_path / "b.npy", np.full((2, 3, 4), 70000, np.int32))
    np.save(tmp_path / "c.npy", np.full((2, 3, 4), 7, np.int32))
    v = di.imread(str(tmp_path / "*.npy"), size=(2, 3, 4), chunks=1)
    assert v.dtype == np.int16
    with pytest.raises(DecodeError, match=r"b\.npy.*70000\.\.70000, outside the int16"):
        v.compute()
    assert (v[2].compute() == 7).all()  # an int32 file whose values fit int16


def test_a_first_file_of_a_dtype_no_store_holds_is_named(tmp_path):
    # a float128 (long double) first file: "dtype of volumes must be one of ...; got
    # 'float128'", as if the caller had passed dtype=, naming no file and not skippable
    (tmp_path / "ct" / "a").mkdir(parents=True)
    np.save(tmp_path / "ct" / "a" / "0.npy", np.zeros((3, 4, 5), np.longdouble))
    np.save(tmp_path / "ct" / "a" / "1.npy", np.ones((3, 4, 5), np.float32))
    if np.dtype(np.longdouble).itemsize == 8:
        pytest.skip("long double is float64 on this platform")
    with pytest.raises(DecodeError, match=r"0\.npy.*unsupported volume dtype float128"):
        di.from_folder(tmp_path / "ct", size=(3, 4, 5))
    ds = di.from_folder(tmp_path / "ct", size=(3, 4, 5), on_error="skip")
    assert ds.images.dtype == np.float32  # from the next file, as for any bad first file


def test_a_float_dtype_that_cannot_hold_the_values_is_refused_naming_the_file(tmp_path):
    # a float16 first file (or dtype="float16") turned uint16 65535 into inf and int16 2049
    # into 2048 with no error
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 4), np.float16))
    b = np.full((2, 3, 4), 1000, np.int16)
    b[0, 0, 0] = 2049
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "c.npy", np.full((2, 3, 4), 65535, np.uint16))
    np.save(tmp_path / "d.npy", np.full((2, 3, 4), 1e6, np.float32))
    np.save(tmp_path / "e.npy", np.full((2, 3, 4), -2048, np.int16))
    v = di.imread(str(tmp_path / "*.npy"), size=(2, 3, 4), chunks=1)
    assert v.dtype == np.float16
    for i, what in [
        (1, r"b\.npy.*1000\.\.2049; float16 holds whole numbers exactly only within -2048\.\.2048"),
        (2, r"c\.npy.*65535\.\.65535.*rounded or become infinity"),
        (3, r"d\.npy.*holds 1000000\.0, beyond float16's largest value 65504\.0"),
    ]:
        with pytest.raises(DecodeError, match=what):
            v[i].compute()
    # values float16 holds exactly are kept exactly (numpy's own cast is the oracle)
    np.testing.assert_array_equal(
        v[4].compute()[..., 0], np.full((2, 3, 4), -2048, np.int16).astype(np.float16)
    )
    got = di.imread([str(tmp_path / "b.npy")], size=(2, 3, 4), dtype="float32").compute()
    np.testing.assert_array_equal(got[0, ..., 0], b.astype(np.float32))
    # int64 into float64, which numpy calls a safe cast, rounded values beyond 2**53
    ids = np.full((2, 3, 4), 2**53 + 1, np.int64)
    np.save(tmp_path / "ids.npy", ids)
    with pytest.raises(DecodeError, match=r"ids\.npy.*float64 holds whole numbers exactly"):
        di.imread([str(tmp_path / "ids.npy")], size=(2, 3, 4), dtype="float64").compute()
    small = np.full((2, 3, 4), 2**53, np.int64)
    np.save(tmp_path / "ok.npy", small)
    got = di.imread([str(tmp_path / "ok.npy")], size=(2, 3, 4), dtype="float64").compute()
    assert (got == 2.0**53).all()


def test_float_values_a_narrower_float_would_make_0_are_refused_naming_the_file(tmp_path):
    # dtype="float32" made a float64 volume's 1e-300 a 0 without a word (1e39, inf, was refused)
    vol = np.full((2, 3, 4), 0.5)
    vol[1, 2, 3] = -1e-300
    np.save(tmp_path / "tiny.npy", vol)
    with pytest.raises(DecodeError, match=r"tiny\.npy.*holds -1e-300, below float32's smallest"):
        di.imread([str(tmp_path / "tiny.npy")], size=(2, 3, 4), dtype="float32").compute()
    vol[1, 2, 3] = 1e-40  # float32 holds it (subnormal): kept as numpy casts it
    np.save(tmp_path / "sub.npy", vol)
    got = di.imread([str(tmp_path / "sub.npy")], size=(2, 3, 4), dtype="float32").compute()
    np.testing.assert_array_equal(got[0, ..., 0], vol.astype(np.float32))


def test_tiff_stacks_keep_their_dtype(tmp_path):
    vol = make_volume((4, 5, 6), dtype="int16", value_range=(-1000, 2000))
    tifffile.imwrite(tmp_path / "s.tif", vol, photometric="minisblack")
    v = di.imread([str(tmp_path / "s.tif")], size=(4, 5, 6))
    assert v.dtype == np.int16
    np.testing.assert_array_equal(v.compute()[0, ..., 0], vol)


def test_from_folder_of_volumes_keeps_the_dtype(tmp_path):
    make_volume_folder(
        tmp_path / "v",
        n=4,
        shape=(4, 5, 6),
        dtype="int16",
        value_range=(-1000, 2000),
        classes=("a", "b"),
    )
    ds = di.from_folder(tmp_path / "v", size=(4, 5, 6))
    assert ds.images.dtype == np.int16
    sizes = ds.columns["source_size"].compute()
    assert sizes.tolist() == [[4, 5, 6]] * 4


def test_volume_dtypes_in_the_spec():
    assert DecodeSpec((2, 3, 4), dtype="int16").dtype == "int16"
    with pytest.raises(ValueError, match="dtype of images must be"):
        DecodeSpec((3, 4), dtype="int16")


def test_window_is_the_percentiles():
    rng = np.random.default_rng(0)
    x = rng.normal(40, 300, 10000)
    assert window(x) == tuple(float(v) for v in np.percentile(x, WINDOW))
    assert window(np.full(5, 3.0)) == (2.5, 3.5)
    assert window(np.array([np.nan, 1.0, 2.0])) == pytest.approx((1.01, 1.99))


def test_show_draws_a_ct_slice_with_a_window_labelled_with_its_values(ct):
    ds = di.from_folder(ct[0].parent, size=(8, 10, 12))
    fig = grid_figure(ds, n=4, cols=4)
    axes = [ax for ax in fig.axes if ax.images]
    assert len(axes) == 4
    volumes = dask.compute(ds.images)[0][..., 0]
    for ax in axes:
        i = int(ax.get_title().split("\n")[0].lstrip("#"))
        middle = volumes[i, volumes.shape[1] // 2]
        lo, hi = window(middle)
        assert ax.images[0].get_clim() == pytest.approx((lo, hi))
        assert ax.get_title().split("\n")[1] == f"{lo:.4g}..{hi:.4g}"
        # a CT window spans soft tissue to bone, not 0..1: the slice is not all white
        assert lo < 0 < hi and hi > 1
        shown = ax.images[0].get_array()
        assert 0 < np.mean((shown - lo) / (hi - lo)) < 1


def test_show_draws_float_images_with_a_window(tmp_path):
    images = np.linspace(-5, 5, 2 * 6 * 7 * 3, dtype=np.float32).reshape(2, 6, 7, 3)
    fig = grid_figure(di.ImageSet(images, [0, 1], classes=["a", "b"]), n=2)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert all("\n" in t for t in titles)
    rgb = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert all(float(a.min()) >= 0 and float(a.max()) <= 1 for a in rgb)


def test_show_draws_boxes_and_masks(tmp_path):
    images = np.zeros((2, 10, 12, 3), np.uint8)
    boxes = np.array([[1, 2, 5, 6], [np.nan] * 4], np.float32)
    masks = np.zeros((2, 10, 12), np.uint8)
    masks[0, 2:6, 1:5] = 3
    ds = di.ImageSet(images, columns={"bbox": boxes, "masks": masks}, boxes=("bbox",))
    fig = grid_figure(ds, n=2)
    drawn = [ax for ax in fig.axes if ax.images]
    patches = {ax.get_title(): len(ax.patches) for ax in drawn}
    assert patches == {"#0": 1, "#1": 0}
    overlays = {ax.get_title(): len(ax.images) for ax in drawn}
    assert overlays == {"#0": 2, "#1": 1}


def test_show_does_not_import_imageset():
    import ast
    import inspect

    import daskimg.show

    tree = ast.parse(inspect.getsource(daskimg.show))
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for m in imported if "imageset" in m or m.startswith("read")]


def _read(path, size, **kw):
    with dask.config.set(scheduler="sync"):
        return di.imread([str(path)], size=size, **kw).compute()[0, ..., 0]


def test_a_tiff_stack_cut_between_pages_is_an_error_not_a_shorter_stack(tmp_path):
    vol = np.stack([np.full((16, 12), 40 * (k + 1), np.uint8) for k in range(6)])
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, vol)  # one page per slice
    with tifffile.TiffFile(whole) as tif:
        fifth = tif.pages[4].offset  # where page 4's directory starts
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:fifth])
    with tifffile.TiffFile(cut) as tif:  # the oracle: tifffile reads a shorter stack
        assert len(tif.pages) < 6
    with pytest.raises(DecodeError, match=r"cut\.tif.*truncated TIFF"):
        _read(cut, (6, 16, 12))
    np.testing.assert_array_equal(_read(whole, (6, 16, 12)), vol)


@pytest.mark.parametrize("quiet", ["level", "disable"])
@pytest.mark.parametrize("kind", ["imagej", "zlib", "ome"])
def test_a_cut_tiff_stack_is_an_error_with_tifffile_s_logger_quieted(tmp_path, kind, quiet):
    """An application that quiets logging (a level above ERROR, or logging.disable) hides
    what tifffile logs about a cut file; the cut must still be named, not read short."""
    vol = np.arange(8 * 16 * 12, dtype=np.uint16).reshape(8, 16, 12)
    whole = tmp_path / "whole.tif"
    opts = {"imagej": {"imagej": True}, "zlib": {"compression": "zlib"}, "ome": {"ome": True}}
    tifffile.imwrite(whole, vol, **opts[kind])
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    log = logging.getLogger("tifffile")
    level = log.level
    try:
        if quiet == "level":
            log.setLevel(logging.CRITICAL)
        else:
            logging.disable(logging.CRITICAL)
        with tifffile.TiffFile(cut) as tif:  # the oracle: tifffile, quiet, reads fewer slices
            assert np.asarray(tif.series[0].asarray()).size < vol.size
        with pytest.raises(DecodeError, match=r"cut\.tif.*truncated TIFF: page \d+ starts"):
            _read(cut, (8, 16, 12))
        np.testing.assert_array_equal(_read(whole, (8, 16, 12)), vol)
    finally:
        log.setLevel(level)
        logging.disable(logging.NOTSET)


def test_a_tiff_page_chain_that_loops_is_an_error(tmp_path):
    vol = np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5)
    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, vol, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        first, last = tif.pages[0].offset, tif.pages[-1].offset
        entries = len(tif.pages[-1].tags)
    data = bytearray(path.read_bytes())
    link = last + 2 + 12 * entries  # classic TIFF: 2-byte count, 12-byte entries
    assert data[link : link + 4] == b"\0\0\0\0"  # the last page ends the chain
    data[link : link + 4] = first.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the page chain is walked when tifffile's logs are lost
    try:
        with pytest.raises(DecodeError, match=r"loop\.tif.*links back to an earlier page"):
            _read(path, (4, 6, 5))
    finally:
        log.setLevel(level)


def test_tiff_series_slices_and_color_images(tmp_path):
    vol = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    slices = tmp_path / "slices.tif"
    for s in vol:  # the usual loop: each slice its own series
        tifffile.imwrite(slices, s, append=True)
    np.testing.assert_array_equal(_read(slices, (5, 6, 7)), vol)

    two = tmp_path / "two.tif"
    tifffile.imwrite(two, np.zeros((4, 6, 5), np.uint16), photometric="minisblack")
    tifffile.imwrite(two, np.full((3, 6, 5), 999, np.uint16), photometric="minisblack", append=True)
    with tifffile.TiffFile(two) as tif:
        assert len(tif.series) == 2
    with pytest.raises(DecodeError, match=r"two\.tif.*2 image series"):
        _read(two, (4, 6, 5))

    rgb = tmp_path / "photo.tif"
    tifffile.imwrite(rgb, np.zeros((24, 20, 3), np.uint8), photometric="rgb")
    with pytest.raises(DecodeError, match=r"photo\.tif.*color image"):
        _read(rgb, (8, 8, 8))
    three = tmp_path / "three.tif"  # 3 slices: tifffile's default stores them as RGB planes
    with pytest.warns(DeprecationWarning, match="RGB"):
        tifffile.imwrite(three, vol[:3])
    np.testing.assert_array_equal(_read(three, (3, 6, 7)), vol[:3])


@pytest.mark.parametrize("dtype", ["int64", "uint64"])
def test_wide_integer_volumes_zoom_exactly_or_are_refused(tmp_path, dtype):
    exact = tmp_path / "exact.npy"
    np.save(exact, np.full((4, 6, 6), 2**53, dtype))
    got = _read(exact, (2, 3, 3), dtype=dtype)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, np.full((2, 3, 3), 2**53, dtype))
    big = tmp_path / "big.npy"
    top = np.iinfo(dtype).max
    np.save(big, np.full((4, 6, 6), top, dtype))
    np.testing.assert_array_equal(_read(big, (4, 6, 6)), np.full((4, 6, 6), top, dtype))
    with pytest.raises(DecodeError, match=r"big\.npy.*float64.*own size"):
        _read(big, (2, 3, 3))
    # from float64 too: a constant 2**63 - 1024 zoomed came out as -2**63 in 65 of 105 voxels
    near = tmp_path / "near.npy"
    np.save(near, np.full((4, 6, 6), float(top - 2047), np.float64))
    with pytest.raises(DecodeError, match=r"near\.npy.*float64.*own size"):
        _read(near, (3, 5, 7), dtype=dtype)
    small = tmp_path / "small.npy"  # well within 2**53: zoomed exactly (oracle: the constant)
    np.save(small, np.full((4, 6, 6), 2.0**40 + 3, np.float64))
    np.testing.assert_array_equal(
        _read(small, (3, 5, 7), dtype=dtype), np.full((3, 5, 7), 2**40 + 3)
    )


@pytest.mark.parametrize(
    ("axes", "says"),
    [("YXZ", r"rows and columns \(Y, X\) are not its last two"), ("XYZ", r"\(Y, X\) are not"),
     ("ZXY", r"\(Y, X\) are not"), ("ZYX", None), ("TYX", None), ("CYX", None)],
)  # fmt: skip
def test_tiff_axes_other_than_depth_rows_columns_are_refused(tmp_path, axes, says):
    # a YXZ stack was read with its rows as depth: tifffile's own axes were not looked at.
    # A first axis of channels or time (tifffile writes imagej=True stacks as CYX) keeps
    # its slices where depth's would be: read as depth
    zyx = np.arange(3 * 6 * 7, dtype=np.uint16).reshape(3, 6, 7)
    stored = np.transpose(zyx, ["ZYX".index(a) if a in "ZYX" else 0 for a in axes])
    f = tmp_path / "stack.tif"
    tifffile.imwrite(f, stored, metadata={"axes": axes}, photometric="minisblack")
    with tifffile.TiffFile(f) as tif:  # the oracle: tifffile's axes
        assert tif.series[0].axes == axes
    if says is None:
        np.testing.assert_array_equal(_read(f, (3, 6, 7)), tifffile.imread(f))
    else:
        with pytest.raises(DecodeError, match=rf"stack\.tif.*axes are {axes}.*{says}"):
            _read(f, (3, 6, 7))


def test_skip_passes_over_a_bad_first_volume(tmp_path):
    root = tmp_path / "set"
    (root / "ct").mkdir(parents=True)
    (root / "ct" / "000.npy").write_bytes(b"")
    vols = [np.full((4, 8, 8), i, np.int16) for i in range(1, 4)]
    for i, v in enumerate(vols, 1):
        np.save(root / "ct" / f"{i:03d}.npy", v)
    with pytest.raises(DecodeError, match=r"000\.npy"):
        di.from_folder(root, size=(4, 8, 8))
    ds = di.from_folder(root, size=(4, 8, 8), on_error="skip")
    assert ds.images.dtype == np.int16
    di.to_zarr(ds, tmp_path / "o.zarr.zip", order="source")
    import zarr

    stored = zarr.open_group(zarr.storage.ZipStore(tmp_path / "o.zarr.zip", mode="r"), mode="r")
    np.testing.assert_array_equal(stored["images"][:][..., 0], np.stack(vols))
    assert [s[0] for s in di.open_zarr(tmp_path / "o.zarr.zip").skipped] == ["ct/000.npy"]


def test_crop_or_pad_of_volumes_is_refused():
    with pytest.raises(ValueError, match=r"volumes .* always stretched"):
        DecodeSpec((4, 16, 16), resize="pad")


def test_tiff_metadata_errors_do_not_refuse_good_pixels_nor_silence_tifffile(tmp_path):
    import logging

    vol = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    path = tmp_path / "ome.tif"
    broken = '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
    tifffile.imwrite(
        path,
        vol,
        photometric="minisblack",
        description=broken + "<Image><Pixels BROKEN/></Image></OME>",
    )
    np.testing.assert_array_equal(tifffile.imread(path), vol)  # the oracle reads it
    np.testing.assert_array_equal(_read(path, (4, 8, 8), dtype="uint16"), vol)
    # tifffile's own messages still reach the application (no handler left on its logger)
    assert logging.getLogger("tifffile").handlers == []


def test_the_feed_flips_volumes_left_right_and_keeps_their_values(tmp_path):
    # random_flip flipped a volume's rows (H), not its columns (W); random_crop cut depth and
    # height; TorchDataset(dtype=float32) divided uint16 CT values by 65535 (int16 not)
    from daskimg.transforms import random_crop, random_flip

    rng = np.random.default_rng(0)
    vols = rng.integers(0, 4000, (6, 4, 5, 7, 1), dtype=np.uint16)
    path = di.to_zarr(di.ImageSet(vols), tmp_path / "v.zarr.zip", order="source")
    it = di.BatchIterator(
        path, batch_size=3, arrays=("images", "index"), transform=random_flip(p=1.0)
    )
    for images, index in it:  # the oracle: numpy's flip of the width axis
        np.testing.assert_array_equal(images, vols[index][:, :, :, ::-1])
    with pytest.raises(ValueError, match=r"random_crop cuts images \(H, W, C\).*4-D"):
        di.BatchIterator(path, batch_size=3, transform=random_crop((3, 3)))  # when made
    torch = pytest.importorskip("torch")
    from daskimg.torch import TorchDataset

    ds = TorchDataset(path, batch_size=3, arrays=("images", "index"), dtype=torch.float32)
    for images, index in torch.utils.data.DataLoader(ds, batch_size=None):
        np.testing.assert_array_equal(images.numpy(), vols[index.numpy()].astype(np.float32))


def test_keras_auto_scale_keeps_volume_values(tmp_path):
    pytest.importorskip("keras")
    from daskimg.keras import KerasDataset

    vols = np.random.default_rng(1).integers(0, 4000, (6, 4, 5, 7, 1), dtype=np.uint16)
    path = di.to_zarr(di.ImageSet(vols), tmp_path / "v.zarr.zip", order="source")
    ds = KerasDataset(path, batch_size=6, arrays=("images",))  # store order: row k, sample k
    (x,) = ds[0]
    np.testing.assert_array_equal(np.asarray(x), vols.astype(np.float32))  # oracle: numpy


def test_an_ome_file_of_separate_images_is_no_volume_and_advice_fits(tmp_path):
    # an OME-TIFF naming 3 separate 2-D images was read as one 3-slice volume; an int64
    # volume beyond int32 was told to use float32, which is refused for those values too
    images = np.arange(3 * 16 * 20, dtype=np.uint16).reshape(3, 16, 20)
    path = tmp_path / "fields.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for k, im in enumerate(images):
            tif.write(im, metadata={"Name": f"field{k}"})
    with tifffile.TiffFile(path) as tif:  # the oracle: tifffile sees 3 images
        assert len(tif.series) == 3
    with pytest.raises(DecodeError, match=r"3 image series"):
        _read(path, (3, 16, 20))
    big = np.full((2, 3, 4), 2**40 + 1, np.int64)
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(DecodeError, match=r"pass dtype='(u?int64)'") as e:
        _read(tmp_path / "big.npy", (2, 3, 4), dtype="int32")
    advised = re.search(r"pass dtype='(\w+)'", str(e.value))[1]
    np.testing.assert_array_equal(_read(tmp_path / "big.npy", (2, 3, 4), dtype=advised), big)


def test_a_volume_mask_flips_along_the_width_with_its_volume():
    # the volume flipped along W, its (N, D, H, W) mask along H, without an error
    from daskimg.transforms import random_flip

    rng = np.random.default_rng(2)
    vols = rng.integers(0, 255, (4, 3, 5, 7, 1), dtype=np.uint8)
    masks = rng.integers(0, 3, (4, 3, 5, 7), dtype=np.uint8)
    src = {"images": vols, "m": masks}
    with pytest.raises(ValueError, match=r"not the masks \['m'\]"):
        di.BatchIterator(src, batch_size=2, arrays=("images", "m"), transform=random_flip(p=1.0))
    it = di.BatchIterator(
        src,
        batch_size=2,
        arrays=("images", "m", "index"),
        transform=random_flip(p=1.0, masks=("m",)),
    )
    for images, m, index in it:  # the oracle: numpy's flip of the width axis of both
        np.testing.assert_array_equal(images, vols[index][:, :, :, ::-1])
        np.testing.assert_array_equal(m, masks[index][:, :, :, ::-1])


def test_a_tiff_header_declaring_more_than_memory_is_a_decode_error_naming_it(tmp_path):
    # 1.5 KB whose header claims 2 x 65000 x 65000 float64: a bare MemoryError naming no
    # file, which on_error="skip" did not leave out
    import os
    import struct

    (tmp_path / "vols" / "ct").mkdir(parents=True)
    good = tmp_path / "vols" / "ct" / "good.tif"
    tifffile.imwrite(good, np.ones((2, 16, 16), np.float64))
    data = bytearray(good.read_bytes())
    with tifffile.TiffFile(good) as tif:
        for page in tif.pages:
            for tag in page.tags.values():
                if tag.code in (256, 257):  # width, length: written in the tag itself
                    struct.pack_into("<H" if tag.dtype == 3 else "<I", data, tag.valueoffset, 65000)
    bomb = tmp_path / "vols" / "ct" / "bomb.tif"
    bomb.write_bytes(bytes(data))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory < 2 * 65000 * 65000 * 8  # the oracle: more than this machine holds
    with pytest.raises(DecodeError, match=r"bomb\.tif.*declares a volume.*more than this machine"):
        di.imread([str(bomb)], size=(2, 16, 16)).compute(scheduler="sync")
    ds = di.from_folder(tmp_path / "vols", size=(2, 16, 16), on_error="skip")
    di.to_zarr(ds, tmp_path / "v.zarr.zip")
    store = di.open_zarr(tmp_path / "v.zarr.zip")
    assert len(store) == 1 and [p for p, _ in store.skipped] == ["ct/bomb.tif"]


def test_volumes_without_their_channel_axis_are_named_when_stored(tmp_path, caplog):
    # (N, D, H, W) volumes were stored as 2-D images of W channels without a word: a loader
    # then handed out (N, W, D, H) and flips moved the H axis
    import logging

    vols = np.zeros((3, 8, 16, 16), np.int16)
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.to_zarr(di.ImageSet(vols), tmp_path / "v.zarr.zip")
    assert "stored as 2-D images of 16 channels each; if they are volumes" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.to_zarr(di.ImageSet(vols[..., None]), tmp_path / "w.zarr.zip")
    assert "channels each" not in caplog.text


@pytest.mark.parametrize("dtype", ["int16", "int32", "int64"])
@pytest.mark.parametrize("channels", [1, 3])
def test_show_draws_signed_and_wide_integer_images_with_a_window(dtype, channels):
    # int64 pixels of 0..255 (np.array of a list of images) were drawn black (>> 8), a
    # negative int16 white (wrapped), a 2-D int16 CT slice almost black (0..32767)
    rng = np.random.default_rng(0)
    values = rng.integers(-1000, 1500, (2, 6, 6, channels)).astype(dtype)
    fig = grid_figure(di.ImageSet(values, [0, 1], classes=["a", "b"]), n=2)
    for ax, img in zip(fig.axes, values, strict=True):
        lo, hi = window(img)
        shown = ax.images[0]
        if channels == 1:
            assert shown.get_clim() == (lo, hi)
        else:  # drawn as 0..1 from the window, oracle: numpy
            oracle = np.clip((img.astype(np.float64) - lo) / (hi - lo), 0, 1)
            np.testing.assert_allclose(np.asarray(shown.get_array()), oracle)
        assert f"{lo:.4g}..{hi:.4g}" in ax.get_title()


@pytest.mark.parametrize(
    ("first", "later"), [("float16", "float64"), ("float32", "float64"), ("float16", "float32")]
)
def test_wider_floats_than_the_first_file_s_are_refused_not_rounded(tmp_path, first, later):
    # the set's dtype is its first file's: a later file of wider floats was rounded to it
    # without a word (1000.12 stored as 1000.0); asked for, a narrower float rounds
    rng = np.random.default_rng(0)
    a = rng.random((4, 5, 6)).astype(first)
    b = (rng.random((4, 5, 6)) + 1000.1234).astype(later)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    ds = di.from_folder(tmp_path, size=(4, 5, 6))
    assert ds.images.dtype == first
    with pytest.raises(
        di.errors.DecodeError, match=rf"b.npy.*taken from its first file.*dtype='{later}'"
    ):
        di.to_zarr(ds, tmp_path / "r.zarr.zip")
    for name, dtype in ((later, later), (first, first)):  # asked for: kept, or rounded
        path = di.to_zarr(
            di.from_folder(tmp_path, size=(4, 5, 6), dtype=dtype), tmp_path / f"{name}.zarr.zip",
            order="source",
        )  # fmt: skip
        stored = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")["images"]
        np.testing.assert_array_equal(stored[1, ..., 0], b.astype(dtype))  # the oracle: numpy
    exact = b.astype(first).astype(later)  # values the first file's dtype holds: taken
    np.save(tmp_path / "b.npy", exact)
    ds = di.imread(str(tmp_path / "*.npy"), size=(4, 5, 6))
    np.testing.assert_array_equal(ds[1, ..., 0].compute(), exact.astype(first))


def test_volume_masks_and_odd_tiff_pages_are_said_for_what_they_are(tmp_path):
    # masks= with volumes: the first mask's shape was refused ("must be 2-D"), and once
    # a 2-D one was given, masks at all; a TIFF of one odd page was "corrupt or truncated"
    from PIL import Image

    (tmp_path / "img" / "c").mkdir(parents=True)
    (tmp_path / "msk" / "c").mkdir(parents=True)
    np.save(tmp_path / "img" / "c" / "a.npy", np.zeros((4, 8, 8), np.int16))
    np.save(tmp_path / "msk" / "c" / "a.npy", np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"masks and boxes go with 2-D images, not volumes"):
        di.from_folder(tmp_path / "img", size=(4, 8, 8), masks=tmp_path / "msk")
    u = np.random.default_rng(0).integers(0, 256, (8, 16, 16)).astype(np.uint8)
    pages = [Image.fromarray(s) for s in u]
    pages[4] = Image.fromarray(u[4][:8, :8])
    pages[0].save(tmp_path / "a.tif", save_all=True, append_images=pages[1:])
    with Image.open(tmp_path / "a.tif") as im:
        assert im.n_frames == 8  # the oracle: a sound file Pillow reads page by page
    with pytest.raises(DecodeError, match=r"a\.tif.*pages are not all of one shape"):
        di.imread(str(tmp_path / "a.tif"), size=(8, 16, 16)).compute()
    # truncated: it was "2 image series", not damage
    raw = (tmp_path / "a.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DecodeError, match=r"t\.tif.*corrupt or truncated TIFF"):
        di.imread(str(tmp_path / "t.tif"), size=(8, 16, 16)).compute()
    # a page of another type or samples, same height and width: read as its bytes taken
    # for uint8, garbage without a word (Pillow reads each page as it is: the oracle)
    for odd in (
        u[4].astype(np.float32) + 0.5,
        u[4].astype(np.uint16) * 200,
        np.stack([u[4]] * 3, -1),
    ):
        pages = [Image.fromarray(s) for s in u]
        pages[4] = Image.fromarray(odd)
        pages[0].save(tmp_path / "o.tif", save_all=True, append_images=pages[1:])
        with Image.open(tmp_path / "o.tif") as im:
            im.seek(4)
            np.testing.assert_array_equal(np.asarray(im), odd)
        with pytest.raises(
            DecodeError, match=r"o\.tif.*its page 4 is .* page 0 .*one shape and type"
        ):
            di.imread(str(tmp_path / "o.tif"), size=(8, 16, 16)).compute()
    # the same in a stack tifffile wrote as one block (read by page 0's kind, its pages
    # not parsed): page 4's header edited to int8 (a tag added) or 16 bits was read as
    # uint8, unsaid. tifffile reads that page alone as int8: the oracle
    tifffile.imwrite(tmp_path / "b.tif", u)
    assert tifffile.TiffFile(tmp_path / "b.tif").series[0].dataoffset is not None
    data = bytearray((tmp_path / "b.tif").read_bytes())
    ifd = int.from_bytes(data[4:8], "little")
    for _ in range(4):  # page 4's header
        ifd = int.from_bytes(
            data[ifd + 2 + 12 * int.from_bytes(data[ifd : ifd + 2], "little") :][:4], "little"
        )
    codes = [int.from_bytes(data[ifd + 2 + 12 * e :][:2], "little") for e in range(data[ifd])]
    last = ifd + 2 + 12 * (len(codes) - 1)  # its last tag, ResolutionUnit: made SampleFormat 2
    assert codes[-1] == 296
    for code, typ, value, says in (
        (339, 3, 2, "sample format 2, page 0 1"),
        (None, 0, 16, "bits per sample 16, page 0 8"),
    ):
        odd = bytearray(data)
        if code is None:
            at = ifd + 2 + 12 * codes.index(258)
            odd[at + 8 : at + 10] = value.to_bytes(2, "little")
        else:
            odd[last : last + 12] = b"".join(
                (
                    code.to_bytes(2, "little"),
                    typ.to_bytes(2, "little"),
                    (1).to_bytes(4, "little"),
                    value.to_bytes(4, "little"),
                )
            )
        (tmp_path / "b4.tif").write_bytes(odd)
        if code is not None:
            with tifffile.TiffFile(tmp_path / "b4.tif") as tif:  # its page 4 alone: int8
                assert tif.pages[4].asarray().dtype == np.int8
        with pytest.raises(DecodeError, match=rf"b4\.tif.*its page 4 has {says}.*one block"):
            di.imread(str(tmp_path / "b4.tif"), size=(8, 16, 16)).compute()
    np.testing.assert_array_equal(  # the same block, unedited: read
        di.imread(str(tmp_path / "b.tif"), size=(8, 16, 16)).compute()[0, ..., 0], u
    )
    # reduced-resolution pages after the stack (tifffile: its levels), and one more slice
    # appended without tifffile's shaped metadata: sound, read as tifffile reads them
    with tifffile.TiffWriter(tmp_path / "r.tif") as tw:
        for s in u:
            tw.write(s, metadata=None)
        for s in u:
            tw.write(s[::2, ::2], subfiletype=1, metadata=None)
    np.testing.assert_array_equal(
        di.imread(str(tmp_path / "r.tif"), size=(8, 16, 16)).compute()[0, ..., 0], u
    )
    tifffile.imwrite(tmp_path / "p.tif", u[:7])
    tifffile.imwrite(tmp_path / "p.tif", u[7], append=True, metadata=None)
    np.testing.assert_array_equal(
        di.imread(str(tmp_path / "p.tif"), size=(8, 16, 16)).compute()[0, ..., 0], u
    )
    # cut inside a page header: read as a shorter stack, resized back to 8 slices, unsaid
    # (tifffile logged "invalid offset to page", or nothing at all)
    whole = (tmp_path / "p.tif").read_bytes()
    tifffile.imwrite(tmp_path / "g.tif", u, metadata=None)
    plain = (tmp_path / "g.tif").read_bytes()
    for name, data in (("p", whole), ("g", plain)):
        ifd = int.from_bytes(data[4:8], "little")  # the first page's header
        entries = int.from_bytes(data[ifd : ifd + 2], "little")
        second = int.from_bytes(data[ifd + 2 + 12 * entries :][:4], "little")
        (tmp_path / f"c{name}.tif").write_bytes(data[: second + 2])
        with pytest.raises(DecodeError, match=rf"c{name}\.tif.*(corrupt|truncated)"):
            di.imread(str(tmp_path / f"c{name}.tif"), size=(8, 16, 16)).compute()
    pages = [Image.fromarray(s) for s in u]  # pages alike: read as they are
    pages[0].save(tmp_path / "s.tif", save_all=True, append_images=pages[1:])
    np.testing.assert_array_equal(
        di.imread(str(tmp_path / "s.tif"), size=(8, 16, 16)).compute()[0, ..., 0], u
    )


def test_a_flipped_bit_in_a_tiff_header_is_said_as_damage(tmp_path):
    # a TIFF has no checksum; these single-bit flips in its header were read as other
    # voxels without a word (tifffile logged some as errors, not taken for damage):
    # the sample format's type (an int16 stack read as uint16), page 0's strip offset in
    # a stack stored as one block (every voxel shifted), a strip byte count, the image
    # length. The unflipped files read exactly (numpy's oracle)
    import struct

    from PIL import Image

    def entry(data, page, tag):
        off = struct.unpack("<I", data[4:8])[0]
        for _ in range(page):
            n = struct.unpack("<H", data[off : off + 2])[0]
            off = struct.unpack("<I", data[off + 2 + 12 * n : off + 6 + 12 * n])[0]
        n = struct.unpack("<H", data[off : off + 2])[0]
        for i in range(n):
            at = off + 2 + 12 * i
            if struct.unpack("<H", data[at : at + 2])[0] == tag:
                return at
        raise KeyError(tag)

    for name, shape, tag, byte, bit, says in (
        ("format", (5, 5, 6), 339, 3, 1, r"corrupt or truncated TIFF \(tifffile: .*339"),
        ("offset", (5, 5, 6), 273, 8, 2, r"stored as one block from byte \d+ .* page 1's data"),
        ("counts", (5, 5, 6), 279, 8, 4, r"page 0.s strip 0 holds \d+ bytes, its rows 60"),
        (
            "length",
            (5, 5, 6),
            257,
            8,
            2,
            r"corrupt or truncated TIFF \(tifffile: .*StripByteCounts",
        ),
    ):
        v = (np.indices(shape) * np.array([100, 10, 1])[:, None, None, None]).sum(0) - 3000
        v = v.astype(np.int16)
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, v)
        np.testing.assert_array_equal(di.imread(str(path), size=shape).compute()[0, ..., 0], v)
        data = bytearray(path.read_bytes())
        data[entry(data, 0, tag) + byte] ^= bit
        path.write_bytes(data)
        with pytest.raises(DecodeError, match=rf"{name}\.tif.*{says}"):
            di.imread(str(path), size=shape).compute()
    # sound files these checks must not refuse (Pillow reads them: the oracle): no strip
    # byte counts at all (tifffile works them out), a last strip padded to a whole strip
    v = np.arange(5 * 10 * 6, dtype=np.uint16).reshape(5, 10, 6)
    for name in ("nocounts", "padded"):
        path = tmp_path / f"{name}.tif"
        rows = 10 if name == "nocounts" else 4  # (one strip: tifffile works out its count)
        tifffile.imwrite(path, v, rowsperstrip=rows, metadata=None, contiguous=False)
        data = bytearray(path.read_bytes())
        with tifffile.TiffFile(path) as tif:
            pages = [(p.offset, p.dataoffsets, p.databytecounts) for p in tif.pages]
        for offset, starts, counts in pages:
            at = entry(data, [o for o, _, _ in pages].index(offset), 279)
            if name == "nocounts":  # the tag renamed to a private one
                data[at : at + 2] = struct.pack("<H", 65001)
            else:  # counts written out of line: the last one made a whole strip's
                where = struct.unpack("<I", data[at + 8 : at + 12])[0]
                struct.pack_into("<I", data, where + 4 * (len(counts) - 1), counts[0])
                assert starts[-1] + counts[0] <= len(data)
        path.write_bytes(data)
        with Image.open(path) as im:
            frames = []
            for i in range(im.n_frames):
                im.seek(i)
                frames.append(np.asarray(im))
        np.testing.assert_array_equal(np.stack(frames), v)
        np.testing.assert_array_equal(di.imread(str(path), size=(5, 10, 6)).compute()[0, ..., 0], v)
