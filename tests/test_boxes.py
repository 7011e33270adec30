"""Boxes and masks follow the pixels: oracles are the object's position in the stored pixels."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from pathlib import Path

import dask
import numpy as np
import pytest
from PIL import Image

import daskimg as di
import daskimg.read.source as source_module
from daskimg.cli import main
from daskimg.errors import DecodeError, NoImagesFoundError
from daskimg.feed.source import FeedSource
from daskimg.read.boxes import clip_boxes, placements, to_source, to_stored
from daskimg.read.geometry import placement
from daskimg.testing import make_object_image, make_object_mask, save_oriented

TARGET = (56, 64)
BACKGROUND, COLOR = 40, 220
MASK_BACKGROUND, MASK_OBJECT, MASK_SECOND = 5, 3, 7

# (height, width) of the upright sources: landscape, portrait, very wide, very tall, odd,
# and one of the target size (not resampled)
SOURCES = [(300, 400), (400, 300), (180, 640), (512, 200), (97, 131), (56, 64), (250, 250)]


def _objects(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """An object box covering 25-55% of each side, somewhere in the picture."""
    bw = int(rng.integers(round(0.25 * w), round(0.55 * w)))
    bh = int(rng.integers(round(0.25 * h), round(0.55 * h)))
    x0 = int(rng.integers(0, w - bw + 1))
    y0 = int(rng.integers(0, h - bh + 1))
    return x0, y0, x0 + bw, y0 + bh


def _library(root: Path, fmt: str, *, n_per_source: int = 3, seed: int = 0) -> list[dict]:
    """Images with one object each, in every EXIF orientation, with masks and a CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for h, w in SOURCES:
        for _ in range(n_per_source):
            box = _objects(rng, h, w)
            if k % 7 == 3:  # at the far left: cut away by a centre crop of a wide picture
                box = (0, box[1], max(2, w // 12), box[3])
            orientation = k % 8 + 1
            name = f"img/{k:03d}.{fmt}"
            save_oriented(
                make_object_image((h, w), box, background=BACKGROUND, color=COLOR),
                root / name,
                orientation=orientation,
            )
            second = (box[0], box[1], box[0] + (box[2] - box[0]) // 3, box[1] + 4)
            mask = make_object_mask(
                (h, w),
                [(box, MASK_OBJECT), (second, MASK_SECOND)],
                background=MASK_BACKGROUND,
                palette=k % 2 == 0,
            )
            mask_name = f"masks/{k:03d}.png"
            (root / "masks").mkdir(exist_ok=True)
            mask.save(root / mask_name)
            rows.append({"path": name, "mask": mask_name, "box": box, "size": (h, w)})
            k += 1
    lines = ["path,label,x0,y0,x1,y1,mask"]
    lines += [
        f"{r['path']},{'ab'[i % 2]},{r['box'][0]},{r['box'][1]},{r['box'][2]},{r['box'][3]},{r['mask']}"
        for i, r in enumerate(rows)
    ]
    (root / "boxes.csv").write_text("\n".join(lines) + "\n")
    return rows


def _profile_edges(profile: np.ndarray) -> tuple[float, float] | None:
    """Edges of a 1-D coverage profile (0..1 per pixel) from its mass and centroid."""
    mass = profile.sum()
    if mass < 0.5:
        return None
    top = profile.max()
    width = mass / top
    centre = float((profile * (np.arange(len(profile)) + 0.5)).sum() / mass)
    return centre - width / 2, centre + width / 2


def measured_box(image: np.ndarray) -> np.ndarray:
    """Where the object is in a stored image (x0, y0, x1, y1), or NaN if it is not there.

    Each pixel's coverage by the object is its level between background and object; an
    area-preserving, symmetric resampling keeps the mass and the centroid of each profile.
    """
    gray = image.astype(np.float64).mean(axis=-1)
    cover = np.clip((gray - BACKGROUND) / (COLOR - BACKGROUND), 0, 1)
    cover[cover < 0.05] = 0  # JPEG ringing
    xs = _profile_edges(cover.sum(axis=0))
    ys = _profile_edges(cover.sum(axis=1))
    if xs is None or ys is None:
        return np.full(4, np.nan)
    return np.array([xs[0], ys[0], xs[1], ys[1]])


def _read(root: Path, resize: str, draft: bool) -> tuple[di.ImageSet, dict[str, np.ndarray]]:
    ds = di.from_csv(
        root / "boxes.csv",
        root=root,
        size=TARGET,
        resize=resize,
        draft=draft,
        boxes={"bbox": ["x0", "y0", "x1", "y1"]},
        mask_column="mask",
        chunks=5,
    )
    names = ("images", "bbox", "masks", "source_size")
    got = dask.compute(*(ds.arrays[k] for k in names))
    return ds, dict(zip(names, got, strict=True))


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    out = {}
    for fmt in ("png", "jpg"):
        root = tmp_path_factory.mktemp(f"boxes-{fmt}")
        out[fmt] = (root, _library(root, fmt))
    return out


#: largest error, in stored pixels, between a stored box and the object found in the pixels
#: (measured: at most 0.08; half a pixel off, the classic pixel-centre slip, would fail)
TOLERANCE = {"png": 0.25, "jpg": 0.25}


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize("draft", [False, True])
@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_stored_boxes_sit_on_the_object_in_the_stored_pixels(libraries, fmt, draft, resize):
    root, rows = libraries[fmt]
    ds, got = _read(root, resize, draft)
    assert ds.boxes == ("bbox",)
    assert got["bbox"].dtype == np.float32 and got["bbox"].shape == (len(rows), 4)
    # the source size is the upright one, whatever the EXIF orientation
    np.testing.assert_array_equal(got["source_size"], [r["size"] for r in rows])
    errors = []
    gone = 0
    for i, _row in enumerate(rows):
        seen = measured_box(got["images"][i])
        stored = got["bbox"][i]
        if np.isnan(seen).any():  # the object is not in the picture: neither is its box
            assert np.isnan(stored).all(), (i, stored)
            gone += 1
            continue
        assert np.isfinite(stored).all(), (i, seen)
        errors.append(np.abs(stored - seen).max())
    worst = max(errors)
    print(f"\n{fmt} {resize:<7} draft={draft!s:<5} largest box error {worst:.3f} stored px")
    assert worst <= TOLERANCE[fmt]
    if resize == "crop":
        assert gone >= 1  # the library has objects a centre crop cuts away
    else:
        assert gone == 0


def test_draft_really_decodes_at_a_smaller_scale(libraries, monkeypatch):
    # the draft tests above mean something only if libjpeg's scaling is used: by Pillow's
    # draft, or by the fast path (which takes the EXIF-rotated JPEGs too)
    from PIL import JpegImagePlugin

    from daskimg.read import fastjpeg

    calls = []
    original = JpegImagePlugin.JpegImageFile.draft
    fast = fastjpeg.decode

    def spy(self, mode, size):
        result = original(self, mode, size)
        calls.append(result is not None and result[1][2] > 1)
        return result

    def fast_spy(data, header, *, mode, scale=1):
        pixels = fast(data, header, mode=mode, scale=scale)
        calls.append(pixels is not None and scale > 1)
        return pixels

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    monkeypatch.setattr(fastjpeg, "decode", fast_spy)
    root, _ = libraries["jpg"]
    _read(root, "stretch", True)
    assert sum(calls) >= 5


@pytest.mark.parametrize("resize", ["stretch", "crop", "pad"])
def test_masks_follow_the_image_geometry_by_nearest_neighbour(libraries, resize):
    root, rows = libraries["png"]
    _, got = _read(root, resize, False)
    masks = got["masks"]
    assert masks.shape == (len(rows), *TARGET) and masks.dtype == np.uint8
    source_ids = {MASK_BACKGROUND, MASK_OBJECT, MASK_SECOND}
    for i in range(len(rows)):
        values = set(np.unique(masks[i]).tolist())
        # only the source's class ids (and the padding's 0): nothing blended
        allowed = source_ids | ({0} if resize == "pad" else set())
        assert values <= allowed, (i, values)
        seen = measured_box(got["images"][i])
        inside = np.isin(masks[i], (MASK_OBJECT, MASK_SECOND))
        if np.isnan(seen).any():
            assert not inside.any()
            continue
        ys, xs = np.nonzero(inside)
        mask_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        # nearest neighbour puts each edge on the pixel whose centre the object covers
        assert np.abs(mask_box - seen).max() <= 1.0, (i, mask_box, seen)


def test_masks_match_a_numpy_nearest_neighbour_oracle(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 9, (37, 53)).astype(np.uint8)
    Image.fromarray(ids).save(tmp_path / "m.png")
    make_object_image((37, 53), (0, 0, 1, 1)).save(tmp_path / "i.png")
    (tmp_path / "s.csv").write_text("path,mask\ni.png,m.png\n")
    for resize in ("stretch", "crop", "pad"):
        ds = di.from_csv(
            tmp_path / "s.csv",
            root=tmp_path,
            size=(20, 31),
            resize=resize,
            mask_column="mask",
            label_column=None,
        )
        got = ds.columns["masks"][0].compute()
        where = placement((37, 53), (20, 31), resize)
        x0, y0, x1, y1 = where.box
        fw, fh = where.size
        expected = np.zeros((20, 31), np.uint8)
        for r in range(fh):
            for c in range(fw):
                sx = int(np.floor(x0 + (c + 0.5) * (x1 - x0) / fw))
                sy = int(np.floor(y0 + (r + 0.5) * (y1 - y0) / fh))
                expected[where.offset[1] + r, where.offset[0] + c] = ids[sy, sx]
        np.testing.assert_array_equal(got, expected, err_msg=resize)


def test_one_compute_decodes_each_file_once(libraries, monkeypatch):
    root, rows = libraries["jpg"]
    seen: list[str] = []
    lock = threading.Lock()
    original = source_module.decode_into

    def counting(path, spec, out, *, data=None):
        with lock:
            seen.append(str(path))
        return original(path, spec, out, data=data)

    monkeypatch.setattr(source_module, "decode_into", counting)
    ds = di.from_csv(
        root / "boxes.csv",
        root=root,
        size=TARGET,
        boxes={"bbox": ["x0", "y0", "x1", "y1"]},
        mask_column="mask",
        chunks=4,
    )
    part = ds.take(np.arange(len(ds))[::-1])  # a reordered set rebuilds its graph
    dask.compute(
        part.images,
        part.columns["masks"],
        part.columns["bbox"],
        part.columns["source_size"],
        part.images.rechunk({0: 6}),  # another chunking of the same tasks
    )
    assert sorted(seen) == sorted(str(root / r["path"]) for r in rows)


def test_boxes_round_trip_to_source(libraries):
    root, rows = libraries["png"]
    for resize in ("stretch", "pad", "crop"):
        ds, got = _read(root, resize, False)
        back = to_source(got["bbox"], got["source_size"], size=TARGET, resize=resize)
        for i, row in enumerate(rows):
            if resize != "crop":
                np.testing.assert_allclose(back[i], row["box"], atol=1e-3)
            elif np.isfinite(back[i]).all():
                # a clipped box comes back as the part of the object the crop shows
                x0, y0, x1, y1 = row["box"]
                assert back[i][0] >= x0 - 1e-3 and back[i][2] <= x1 + 1e-3
                assert back[i][1] >= y0 - 1e-3 and back[i][3] <= y1 + 1e-3
        assert ds.spec is not None and ds.spec.resize == resize


def test_vectorised_placements_equal_the_pixel_geometry():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 900, (400, 2))
    for resize in ("stretch", "crop", "pad"):
        for target in ((224, 224), (56, 64), (31, 7), (1, 1)):
            got = placements(sizes[:, 0], sizes[:, 1], target, resize)
            for k, (h, w) in enumerate(sizes):
                p = placement((h, w), target, resize)
                expected = [p.box[0], p.box[1], *p.scale, *p.offset, *p.picture]
                np.testing.assert_allclose([v[k] for v in got], expected, rtol=1e-12)


def test_to_stored_clips_and_nans():
    # a 100 x 200 source cropped to 50 x 50: the centre 100 x 100 (x 50..150) is kept
    src = np.array(
        [
            [60, 10, 90, 40],  # inside
            [0, 10, 70, 40],  # cut on the left: clipped
            [0, 10, 40, 40],  # wholly outside: NaN
            [0, 10, 50, 40],  # touches the edge only: NaN
            [np.nan] * 4,  # no box: stays NaN
            [100, 50, 100, 50],  # a point inside is kept
        ]
    )
    got = to_stored(src, np.tile([100, 200], (len(src), 1)), size=(50, 50), resize="crop")
    np.testing.assert_allclose(got[0], [5, 5, 20, 20])
    np.testing.assert_allclose(got[1], [0, 5, 10, 20])
    assert np.isnan(got[2:5]).all()
    np.testing.assert_allclose(got[5], [25, 25, 25, 25])
    # a failed file (source size 0) gives NaN, without warnings
    assert np.isnan(to_stored([[1, 2, 3, 4]], [[0, 0]], size=(8, 8))).all()
    np.testing.assert_array_equal(
        clip_boxes([[2, 2, 4, 4]], (0, 0, 3, 3)), np.array([[2, 2, 3, 3]], np.float32)
    )


def test_csv_box_cells(tmp_path):
    make_object_image((20, 30), (1, 1, 5, 5)).save(tmp_path / "a.png")
    make_object_image((20, 30), (1, 1, 5, 5)).save(tmp_path / "b.png")
    csv = tmp_path / "b.csv"

    def read(size=(20, 30), boxes=("x0", "y0", "x1", "y1")):
        return di.from_csv(
            csv, root=tmp_path, size=size, label_column=None, boxes={"b": list(boxes)}
        )

    csv.write_text("path,x0,y0,x1,y1\na.png,,,,\nb.png,1,2,10,12\n")
    ds = read()
    got = ds.columns["b"].compute()
    assert np.isnan(got[0]).all()  # empty cells: no box
    np.testing.assert_array_equal(got[1], [1, 2, 10, 12])  # same size: not moved
    assert "x0" not in ds.columns  # box columns are not also plain columns
    csv.write_text("path,x0,y0,x1,y1\na.png,10,2,1,12\n")
    with pytest.raises(ValueError, match=r"line 2: box 'b' has x0=10.*x0 <= x1"):
        read(size=(8, 8))
    with pytest.raises(ValueError, match="four columns"):
        read(size=(8, 8), boxes=("x0",))
    csv.write_text("path,x0,y0,x1,y1\na.png,1,2,x,12\n")
    with pytest.raises(ValueError, match=r"line 2: box 'b' column 'x1' is not a number"):
        read(size=(8, 8))
    # four NaN cells (numpy's savetxt, pandas' na_rep="NaN") are no box, as empty ones
    csv.write_text("path,x0,y0,x1,y1\nb.png,1,2,10,12\na.png,nan,NaN,nan,nan\n")
    got = read().columns["b"].compute()
    assert np.isnan(got[1]).all() and not np.isnan(got[0]).any()
    # "nan" beside numbers made a half-NaN box; "inf" was clipped to the image's edge
    for cells, col in (("nan,2,10,12", "x0"), ("1,2,inf,12", "x1"), ("1,-Infinity,3,4", "y0")):
        csv.write_text(f"path,x0,y0,x1,y1\nb.png,1,2,10,12\na.png,{cells}\n")
        with pytest.raises(ValueError, match=rf"line 3: box 'b' column '{col}' is .*empty"):
            read(size=(8, 8))


@pytest.mark.parametrize(
    ("header", "says"),
    [
        # COCO's x, y, width, height: 10,5,60,40 was stored as the corners 10,5,60,40
        (("x", "y", "width", "height"), r"'width' names a width or height.*df\['x'\]"),
        (("bbox_x", "bbox_y", "bbox_w", "bbox_h"), r"'bbox_w' names a width or height"),
        (("x_center", "y_center", "w", "h"), r"'w' names a width or height"),
        # widths and heights under names of their own were read as the right and bottom
        (("x", "y", "x_size", "y_size"), r"'x_size' names a width or height"),
        (("x", "y", "dx", "dy"), r"'dx' names a width or height"),
        (("xmin", "ymin", "bw", "bh"), r"'bw' names a width or height"),
        (("left", "top", "w_px", "h_px"), r"'w_px' names a width or height"),
        (("x", "y", "xlen", "ylen"), r"'xlen' names a width or height"),
        (("x", "y", "xsz", "ysz"), r"'xsz' names a width or height"),  # (review)
        (("col", "row", "ncols", "nrows"), r"'ncols' names a width or height"),
        (("x", "y", "width_px", "height_px"), r"'width_px' names a width or height"),
        # TensorFlow's ymin, xmin, ymax, xmax: read as x0, y0, x1, y1
        (
            ("ymin", "xmin", "ymax", "xmax"),
            r"these are y, x, y, x; .*\['xmin', 'ymin', 'xmax', 'ymax'\]",
        ),
        (("top", "left", "bottom", "right"), r"these are y, x, y, x"),
        # scikit-image's regionprops order: rows first
        (("min_row", "min_col", "max_row", "max_col"), r"these are y, x, y, x"),
        (("r0", "c0", "r1", "c1"), r"these are y, x, y, x"),
        # the axis as a word of its own, or row/col with a number: were read as x0, y0, ...
        (("min_y", "min_x", "max_y", "max_x"), r"these are y, x, y, x; .*\['min_x', 'min_y'"),
        (("top_y", "left_x", "bottom_y", "right_x"), r"these are y, x, y, x"),
        (("row0", "col0", "row1", "col1"), r"these are y, x, y, x"),
        # the axis inside a longer name, camelCase, other separators: were read as x0, y0, ...
        (("pred_ymin", "pred_xmin", "pred_ymax", "pred_xmax"), r"these are y, x, y, x"),
        (("bbox/ymin", "bbox/xmin", "bbox/ymax", "bbox/xmax"), r"these are y, x, y, x"),
        (("top_left_y", "top_left_x", "bottom_right_y", "bottom_right_x"), r"these are y, x"),
        (("minY", "minX", "maxY", "maxX"), r"these are y, x, y, x"),
        (("miny", "minx", "maxy", "maxx"), r"these are y, x, y, x"),
        (("upper", "left", "lower", "right"), r"these are y, x, y, x"),  # PIL's order is l, u
        # rows and columns in short: regionprops' own example, the numpy bbox recipe
        (("minr", "minc", "maxr", "maxc"), r"these are y, x, y, x"),
        (("rmin", "cmin", "rmax", "cmax"), r"these are y, x, y, x"),
        (("r_min", "c_min", "r_max", "c_max"), r"these are y, x, y, x"),
        (("topy", "leftx", "boxymax", "boxxmax"), r"these are y, x, y, x"),
        (("gt_r0", "gt_c0", "gt_r1", "gt_c1"), r"these are y, x, y, x"),  # behind a prefix
        (("pred_ytl", "pred_xtl", "pred_ybr", "pred_xbr"), r"these are y, x, y, x"),
        (("gty1", "gtx1", "gty2", "gtx2"), r"these are y, x, y, x"),
        (("tly", "tlx", "bry", "brx"), r"these are y, x, y, x"),  # the corner first
        (("uly", "ulx", "lry", "lrx"), r"these are y, x, y, x"),  # GDAL's -projwin
        # numbered: regionprops_table's rows first (also with separator="_"), or a COCO x, y,
        # w, h split into columns; either was stored as x0, y0, x1, y1
        (("bbox-0", "bbox-1", "bbox-2", "bbox-3"), r"numbered box columns say neither"),
        (("bbox_0", "bbox_1", "bbox_2", "bbox_3"), r"numbered box columns say neither"),
        (("nuc_bbox-0", "nuc_bbox-1", "nuc_bbox-2", "nuc_bbox-3"), r"numbered box columns"),
        (("bbox_0_pred", "bbox_1_pred", "bbox_2_pred", "bbox_3_pred"), r"numbered box columns"),
        (("gty_min", "gtx_min", "gty_max", "gtx_max"), r"these are y, x, y, x"),
        (("r_min1", "c_min1", "r_max1", "c_max1"), r"these are y, x, y, x"),
        (("gty_min1", "gtx_min1", "gty_max1", "gtx_max1"), r"these are y, x, y, x"),
        (("predy_0", "predx_0", "predy_1", "predx_1"), r"these are y, x, y, x"),
        (("x", "y", "n_cols", "n_rows"), r"'n_cols' names a width or height"),
        (("x", "y", "cols", "rows"), r"'cols' names a width or height"),
        # widths and heights in camelCase, or under other words: stored as corners
        (("boxX", "boxY", "boxW", "boxH"), r"'boxW' names a width or height"),
        (("x", "y", "widthPx", "heightPx"), r"'widthPx' names a width or height"),
        (("x", "y", "sizeX", "sizeY"), r"'sizeX' names a width or height"),
        (("col", "row", "colspan", "rowspan"), r"'colspan' names a width or height"),
        # some names say nothing, those that do say another order
        (("a", "left", "b", "right"), r"but 'left' \(number 2\) names an x"),
        # names that say no two x and two y: the hint was the very list refused
        (("c0", "c1", "c2", "c3"), r"say x, x, x, x, not two x and two y.*rename the columns"),
    ],
)
def test_box_columns_named_as_no_corners_are_refused(tmp_path, header, says):
    make_object_image((60, 160), (10, 5, 70, 45)).save(tmp_path / "a.png")
    (tmp_path / "b.csv").write_text("path," + ",".join(header) + "\na.png,10,5,60,40\n")
    with pytest.raises(ValueError, match=says):
        di.from_csv(
            tmp_path / "b.csv", root=tmp_path, size=(60, 160), label_column=None,
            boxes={"b": list(header)},
        )  # fmt: skip
    # the corners under names that say so, or say nothing, read as given
    for names in (
        ("xmin", "ymin", "xmax", "ymax"),
        ("left", "top", "right", "bottom"),
        ("min_col", "min_row", "max_col", "max_row"),
        ("crowd_x0", "crowd_y0", "crowd_x1", "crowd_y1"),  # 'row' inside a word is no row
        ("min_x", "min_y", "max_x", "max_y"),
        ("col0", "row0", "col1", "row1"),
        ("pred_xmin", "pred_ymin", "pred_xmax", "pred_ymax"),
        ("XMin", "YMin", "XMax", "YMax"),
        ("top_left_x", "top_left_y", "bottom_right_x", "bottom_right_y"),
        ("left", "upper", "right", "lower"),
        ("tl_x", "tl_y", "br_x", "br_y"),
        ("minc", "minr", "maxc", "maxr"),
        # an axis word says more than a side: these were refused as "x, x, x, x"
        ("gt_x_top_left", "gt_y_top_left", "gt_x_bottom_right", "gt_y_bottom_right"),
        ("pred_xmin_c0", "pred_ymin_c0", "pred_xmax_c0", "pred_ymax_c0"),  # x/y over c0
        ("row_xmin", "row_ymin", "row_xmax", "row_ymax"),
        ("tlx", "tly", "brx", "bry"),
        ("xmin_1", "ymin_1", "xmax_1", "ymax_1"),  # numbered boxes of a wide table
        ("xmin.1", "ymin.1", "xmax.1", "ymax.1"),  # pandas' name for a repeated column
        ("xmin_y", "ymin_y", "xmax_y", "ymax_y"),  # pandas' merge suffixes
        ("x_l", "y_l", "x_h", "y_h"),  # low and high
        ("extent_xmin", "extent_ymin", "extent_xmax", "extent_ymax"),
        ("cmin_1", "rmin_1", "cmax_1", "rmax_1"),  # a number after rows/columns in short
        ("c_min_1", "r_min_1", "c_max_1", "r_max_1"),
        ("gtxmin_1", "gtymin_1", "gtxmax_1", "gtymax_1"),
        ("predXTopLeft", "predYTopLeft", "predXBottomRight", "predYBottomRight"),
        ("bound_x_lower", "bound_y_lower", "bound_x_upper", "bound_y_upper"),
        ("cmin", "rmin", "cmax", "rmax"),
        ("xl", "yl", "xh", "yh"),  # low and high: no width (h) after x (review)
        ("arrow_a", "arrow_b", "collar_a", "collar_b"),
        "abcd",
    ):
        (tmp_path / "c.csv").write_text("path," + ",".join(names) + "\na.png,10,5,70,45\n")
        ds = di.from_csv(
            tmp_path / "c.csv", root=tmp_path, size=(60, 160), label_column=None,
            boxes={"b": list(names)},
        )  # fmt: skip
        np.testing.assert_array_equal(ds.columns["b"].compute()[0], [10, 5, 70, 45])


def test_imageset_from_arrays_keeps_boxes_as_given():
    boxes = np.array([[1, 2, 3, 4], [0, 0, 8, 8]], np.float32)
    ds = di.ImageSet(np.zeros((2, 8, 8, 3), np.uint8), columns={"bbox": boxes}, boxes=("bbox",))
    np.testing.assert_array_equal(np.asarray(ds.columns["bbox"]), boxes)
    assert ds.take([1]).boxes == ("bbox",)


@pytest.mark.parametrize("lazy", [False, True])
def test_boxes_given_as_fractions_in_arrays_are_named_when_stored(tmp_path, caplog, lazy):
    # YOLO-style 0..1 boxes in an array (an .npz, an HDF5 export) were stored as pixel boxes
    # inside the top-left pixel without a word; from_csv said so for the same values
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [np.nan] * 4], np.float32)
    cols = {"bbox": dask.array.from_array(boxes, chunks=2) if lazy else boxes}
    ds = di.ImageSet(np.zeros((3, 32, 48, 3), np.uint8), columns=cols, boxes=("bbox",))
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        out = di.to_zarr(ds, tmp_path / "f.zarr.zip", order="source")
    assert "every box 'bbox' lies within 0..1" in caplog.text
    np.testing.assert_array_equal(zarr_boxes(out), boxes)  # stored as given
    caplog.clear()
    pixels = {"bbox": boxes * np.float32(30)}  # pixel boxes: nothing to say
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.to_zarr(di.ImageSet(ds.images, columns=pixels, boxes=("bbox",)), tmp_path / "p.zarr")
    assert "0..1" not in caplog.text


@pytest.mark.parametrize(("dtype", "want"), [(np.int16, np.float32), (np.int64, np.float64)])
def test_integer_box_columns_are_stored_as_floats_that_hold_them(tmp_path, dtype, want):
    # an int32 box column was stored as such: a crop in the feed then turned a box cut away
    # into -2**31 corners, a flip turned an unsigned one past the edge into 65531
    boxes = np.array([[1, 2, 3, 4], [0, 0, 8, 8], [-3, 5, 2, 7]], dtype)
    for cols in ({"bbox": boxes}, {"bbox": dask.array.from_array(boxes, chunks=2)}):
        ds = di.ImageSet(np.zeros((3, 8, 8, 3), np.uint8), columns=cols, boxes=("bbox",))
        out = di.to_zarr(ds, tmp_path / f"{type(cols['bbox']).__name__}.zarr.zip", order="source")
        stored = zarr_boxes(out)  # plain zarr
        assert stored.dtype == want
        np.testing.assert_array_equal(stored, boxes)
        fed = FeedSource(out, ["images", "bbox"])
        assert fed.fast == {"images", "bbox"}  # read straight from the store, not computed


def test_a_lazy_box_column_fed_without_a_store_is_checked(tmp_path):
    # checked only by to_zarr: fed straight from the set, a box in another frame was flipped
    # as if it were in the images' (to -110, 50, -70, 80 here)
    images = np.zeros((4, 20, 30, 3), np.uint8)
    boxes = np.array([[1, 1, 5, 5], [2, 2, 6, 6], [100, 50, 140, 80], [0, 0, 30, 20]], np.float32)
    lazy = di.ImageSet(
        images, columns={"bbox": dask.array.from_array(boxes, chunks=(2, 2))}, boxes=("bbox",)
    )
    flip = di.transforms.random_flip(p=1.0, boxes=("bbox",))
    with pytest.raises(ValueError, match=r"boxes 'bbox', row 2: .*wholly outside the images"):
        list(
            di.BatchIterator(
                lazy, batch_size=2, shuffle=False, arrays=("images", "bbox"), transform=flip
            )
        )
    # good boxes are fed as they are, flipped
    boxes[2] = [10, 10, 12, 12]
    good = di.ImageSet(
        images, columns={"bbox": dask.array.from_array(boxes, chunks=3)}, boxes=("bbox",)
    )
    fed = np.concatenate(
        [
            b
            for _, b in di.BatchIterator(
                good, batch_size=2, shuffle=False, arrays=("images", "bbox"), transform=flip
            )
        ]
    )
    np.testing.assert_array_equal(
        fed, np.stack([30 - boxes[:, 2], boxes[:, 1], 30 - boxes[:, 0], boxes[:, 3]], 1)
    )


# (bad box, what the error says); the images are 30 wide and 20 high
BAD_BOXES = [
    ([31, 0, 40, 5], "wholly outside the images, which are 30 x 20"),
    ([0, 21, 4, 25], "wholly outside the images, which are 30 x 20"),
    ([-9, -9, -1, 4], "wholly outside the images, which are 30 x 20"),
    ([5, 5, 2, 8], "x0 <= x1, y0 <= y1"),
    ([5, 5, 8, 2], "x0 <= x1, y0 <= y1"),
    ([np.nan, 1, 2, 3], "some of its four values NaN"),
    ([0, 0, np.inf, 3], "infinite"),
]
# kept as given: a box reaching past edges, a point on the corner, a line, no box (NaN)
GOOD_BOXES = np.array(
    [
        [-5, -5, 10, 10],
        [25, 15, 40, 30],
        [30, 20, 30, 20],
        [3, 3, 3, 9],
        [np.nan] * 4,
        [0, 0, 30, 20],
    ],
    np.float32,
)


@pytest.mark.parametrize(("bad", "says"), BAD_BOXES)
def test_boxes_given_as_arrays_are_checked_naming_the_row(tmp_path, capsys, bad, says):
    """A box column given to ImageSet (in memory, or lazy: checked as to_zarr computes it)
    or read by ``convert`` from an .npz: a box that cannot be x0, y0, x1, y1 in the images'
    pixels is an error naming the column and the row as given (not silently stored)."""
    images = np.zeros((len(GOOD_BOXES), 20, 30, 3), np.uint8)
    boxes = GOOD_BOXES.copy()
    boxes[4] = bad
    with pytest.raises(ValueError, match=rf"boxes 'bbox', row 4: .*{says}"):
        di.ImageSet(images, columns={"bbox": boxes}, boxes=("bbox",))
    for order in ("source", "shuffled"):  # the row as given, not its place in the store
        lazy = di.ImageSet(
            images, columns={"bbox": dask.array.from_array(boxes, chunks=(2, 2))}, boxes=("bbox",)
        )
        out = tmp_path / f"{order}.zarr.zip"
        with pytest.raises(ValueError, match=rf"boxes 'bbox', row 4: .*{says}"):
            di.to_zarr(lazy, out, order=order)
        assert not out.exists()
    np.savez(tmp_path / "a.npz", images=images, bbox=boxes)
    argv = ["convert", str(tmp_path / "a.npz"), str(tmp_path / "a.zarr.zip"), "--boxes", "bbox"]
    assert main(argv) == 2
    assert re.search(rf"a\.npz'.*boxes 'bbox', row 4: .*{says}", capsys.readouterr().err)
    assert not (tmp_path / "a.zarr.zip").exists()


def test_boxes_reaching_past_an_edge_are_stored_as_given(tmp_path):
    images = np.zeros((len(GOOD_BOXES), 20, 30, 3), np.uint8)
    lazy = dask.array.from_array(GOOD_BOXES, chunks=(2, 4))
    for cols in ({"bbox": GOOD_BOXES}, {"bbox": lazy}):
        out = di.to_zarr(
            di.ImageSet(images, columns=cols, boxes=("bbox",)),
            tmp_path / f"{type(cols['bbox']).__name__}.zarr.zip",
            order="source",
        )
        stored = zarr_boxes(out)
        np.testing.assert_array_equal(stored, GOOD_BOXES)


def zarr_boxes(path: Path) -> np.ndarray:
    """The stored box column, read by plain zarr (the oracle)."""
    import zarr

    with zarr.storage.ZipStore(path, mode="r") as store:
        return zarr.open_group(store, mode="r")["bbox"][...]


def test_mask_errors_name_both_files(tmp_path):
    make_object_image((20, 30), (1, 1, 5, 5)).save(tmp_path / "a.png")
    make_object_mask((20, 31), [((0, 0, 2, 2), 1)]).save(tmp_path / "wrong.png")
    make_object_mask((30, 20), [((0, 0, 2, 2), 1)]).save(tmp_path / "turned.png")
    Image.new("RGB", (30, 20), (10, 200, 30)).save(tmp_path / "colour.png")
    csv = tmp_path / "m.csv"

    def read(mask: str) -> None:
        csv.write_text(f"path,mask\na.png,{mask}\n")
        ds = di.from_csv(
            csv,
            root=tmp_path,
            size=(8, 8),
            label_column=None,
            mask_column="mask",
            mask_dtype="uint8",
        )
        ds.columns["masks"].compute()

    with pytest.raises(DecodeError, match=r"a\.png.*its mask .*missing\.png.*no such file"):
        read("missing.png")
    with pytest.raises(DecodeError, match=r"a\.png.*wrong\.png.* is 31x20.*the image 30x20"):
        read("wrong.png")
    with pytest.raises(DecodeError, match=r"turned by 90 degrees"):
        read("turned.png")
    with pytest.raises(DecodeError, match=r"colour\.png.*not gray"):
        read("colour.png")
    np.save(tmp_path / "big.npy", np.full((20, 30), 300, np.int32))
    with pytest.raises(DecodeError, match=r"class ids 300\.\.300, outside uint8"):
        read("big.npy")


def test_mask_dtype_comes_from_the_first_mask(tmp_path):
    make_object_image((20, 30), (1, 1, 5, 5)).save(tmp_path / "a.png")
    np.save(tmp_path / "m.npy", np.full((20, 30), 1000, np.uint16))
    (tmp_path / "m.csv").write_text("path,mask\na.png,m.npy\n")
    ds = di.from_csv(
        tmp_path / "m.csv", root=tmp_path, size=(10, 15), label_column=None, mask_column="mask"
    )
    assert ds.columns["masks"].dtype == np.uint16
    assert (ds.columns["masks"].compute() == 1000).all()
    with pytest.raises(ValueError, match="mask_dtype must be an integer dtype"):
        di.from_csv(
            tmp_path / "m.csv",
            root=tmp_path,
            size=(10, 15),
            label_column=None,
            mask_column="mask",
            mask_dtype="float32",
        )


def test_a_bad_first_mask_is_skipped_or_named_with_its_image_as_any_other(tmp_path):
    # the masks' dtype is taken from the first mask: one that cannot be read made from_csv
    # and from_folder fail at once, on_error="skip" or not, naming the mask as the image
    for i in range(3):
        make_object_image((20, 30), (1, 1, 5, 5)).save(tmp_path / f"{i}.png")
    np.save(tmp_path / "m.npy", np.full((20, 30), 1000, np.uint16))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    csv = tmp_path / "m.csv"
    for bad in ("missing.png", "broken.png"):
        csv.write_text(f"path,mask\n0.png,{bad}\n1.png,m.npy\n2.png,m.npy\n")

        def read(on_error: str) -> di.ImageSet:
            return di.from_csv(
                csv,
                root=tmp_path,
                size=(10, 15),
                label_column=None,
                mask_column="mask",
                on_error=on_error,
            )

        with pytest.raises(DecodeError, match=rf"0\.png.*its mask .*{bad}"):
            read("raise")
        ds = read("skip")
        assert ds.columns["masks"].dtype == np.uint16  # the first mask that reads
        out = tmp_path / f"s-{bad}.zarr.zip"
        di.to_zarr(ds, out)
        back = di.open_zarr(out)
        assert [p for p, _ in ds.skipped] == ["0.png"]
        assert "its mask" in ds.skipped[0][1]
        assert sorted(back.paths.tolist()) == ["1.png", "2.png"]
        assert (back.columns["masks"].compute() == 1000).all()
    # a first mask that reads but holds no class ids (floats): skipped too, the masks' dtype
    # the next one's (its float32 was taken, and the good masks then failed to decode)
    np.save(tmp_path / "float.npy", np.zeros((20, 30), np.float32))
    csv.write_text("path,mask\n0.png,float.npy\n1.png,m.npy\n2.png,m.npy\n")
    ds = read("skip")
    assert ds.columns["masks"].dtype == np.uint16
    back = di.open_zarr(di.to_zarr(ds, tmp_path / "float.zarr.zip"))
    assert sorted(back.paths.tolist()) == ["1.png", "2.png"]
    assert "integer class ids" in ds.skipped[0][1]
    with pytest.raises(DecodeError, match=r"0\.png.*its mask .*float\.npy.*integer class ids"):
        read("raise")
    # none of the masks reads: the first error, for its image
    csv.write_text("path,mask\n0.png,missing.png\n1.png,broken.png\n")
    with pytest.raises(DecodeError, match=r"0\.png.*its mask .*missing\.png"):
        read("skip")
    # from_folder: the first mask in the files' order is broken
    root, masks = tmp_path / "imgs", tmp_path / "masks"
    for k in range(2):
        (root / "cat").mkdir(parents=True, exist_ok=True)
        (masks / "cat").mkdir(parents=True, exist_ok=True)
        make_object_image((20, 30), (1, 1, 5, 5)).save(root / "cat" / f"{k}.png")
        make_object_mask((20, 30), [((0, 0, 2, 2), 3)]).save(masks / "cat" / f"{k}.png")
    (masks / "cat" / "0.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DecodeError, match=r"cat/0\.png.*its mask .*masks/cat/0\.png"):
        di.from_folder(root, size=(10, 15), masks=masks)
    ds = di.from_folder(root, size=(10, 15), masks=masks, on_error="skip")
    di.to_zarr(ds, tmp_path / "f.zarr.zip")
    back = di.open_zarr(tmp_path / "f.zarr.zip")
    assert back.paths.tolist() == ["cat/1.png"]
    assert (back.columns["masks"].compute() == 3).any()


def test_from_folder_masks_by_relative_stem(tmp_path, caplog):
    root, masks = tmp_path / "imgs", tmp_path / "masks"
    for cls, k in (("cat", 0), ("cat", 1), ("dog", 2)):
        save_oriented(make_object_image((30, 40), (k, 2, 20, 12)), root / cls / f"{k}.jpg")
        (masks / cls).mkdir(parents=True, exist_ok=True)
        make_object_mask((30, 40), [((k, 2, 20, 12), k + 1)]).save(masks / cls / f"{k}.png")
    ds = di.from_folder(root, size=(15, 20), masks=masks)
    got = ds.columns["masks"].compute()
    assert got.shape == (3, 15, 20)
    for i, p in enumerate(ds.paths):
        k = int(Path(p).stem)
        assert set(np.unique(got[i]).tolist()) == {0, k + 1}
    # a mask folder inside the root is not a class
    inside = tmp_path / "inside"
    di.testing.make_image_folder(inside, n=4, size=(8, 8), classes=("a", "b"))
    for p in sorted(inside.rglob("*.png")):
        rel = p.relative_to(inside)
        (inside / "masks" / rel.parent).mkdir(parents=True, exist_ok=True)
        make_object_mask((8, 8), [((0, 0, 4, 4), 1)]).save(inside / "masks" / rel)
    ds = di.from_folder(inside, size=(8, 8), masks=inside / "masks")
    assert ds.classes == ("a", "b") and len(ds) == 4
    # a mask whose image is missing (or named otherwise) was passed over without a word
    make_object_mask((30, 40), [((0, 0, 4, 4), 1)]).save(masks / "cat" / "9.png")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert len(di.from_folder(root, size=(15, 20), masks=masks)) == 3
    assert "1 mask file(s) under" in caplog.text
    assert f"{masks / 'cat' / '9.png'}'. If their images are missing" in caplog.text
    (masks / "cat" / "9.png").unlink()
    # a missing mask names the image and the file it expected
    (masks / "dog" / "2.png").unlink()
    with pytest.raises(NoImagesFoundError, match=r"no mask for .*dog/2\.jpg.*masks/dog/2\.\*"):
        di.from_folder(root, size=(15, 20), masks=masks)
    make_object_mask((30, 40), [((0, 0, 1, 1), 1)]).save(masks / "dog" / "2.png")
    np.save(masks / "dog" / "2.npy", np.zeros((30, 40), np.uint8))
    with pytest.raises(ValueError, match=r"has 2 masks"):
        di.from_folder(root, size=(15, 20), masks=masks)
    (masks / "dog" / "2.npy").unlink()
    # two images of one name but their ending (cat/0.jpg, cat/0.png) shared one mask
    save_oriented(make_object_image((30, 40), (5, 2, 20, 12)), root / "cat" / "0.png")
    with pytest.raises(ValueError, match=r"0\.jpg' and .*0\.png' would share the mask"):
        di.from_folder(root, size=(15, 20), masks=masks)


def test_masks_and_boxes_refuse_volumes(tmp_path):
    files = di.testing.make_volume_folder(tmp_path / "v", n=2)
    (tmp_path / "v.csv").write_text(
        "path,x0,y0,x1,y1\n" + "".join(f"{f.name},0,0,1,1\n" for f in files)
    )
    with pytest.raises(ValueError, match="masks and boxes go with 2-D images"):
        di.from_csv(
            tmp_path / "v.csv",
            root=tmp_path / "v",
            size=(4, 4, 4),
            label_column=None,
            boxes={"b": ["x0", "y0", "x1", "y1"]},
        )


def test_skip_leaves_bad_rows_flagged_not_zero_samples(libraries, tmp_path):
    root, rows = libraries["png"]
    ds = di.from_csv(
        root / "boxes.csv",
        root=root,
        size=TARGET,
        boxes={"bbox": ["x0", "y0", "x1", "y1"]},
        mask_column="mask",
        on_error="skip",
    )
    source = ds.row_source
    assert isinstance(source, source_module.FileSource)
    broken = source.take(np.arange(len(ds)))
    broken = source_module.FileSource(
        (*broken.paths[:-1], str(tmp_path / "gone.png")),
        broken.spec,
        broken.block,
        broken.remote,
        broken.masks,
        broken.mask_dtype,
        broken.source_boxes,
    )
    arrays = broken.to_dask_arrays(skip=True)
    ok, boxes, sizes = dask.compute(arrays["ok"], arrays["bbox"], arrays["source_size"])
    assert ok.tolist() == [True] * (len(rows) - 1) + [False]
    assert np.isnan(boxes[-1]).all() and (sizes[-1] == 0).all()
    with pytest.raises(DecodeError, match=r"gone\.png"):
        broken.to_dask_arrays()["bbox"].compute()


def test_store_round_trip_of_boxes_masks_and_source_size(libraries, tmp_path):
    """Depends on the store: it records ``daskimg.boxes`` and gives ``boxes=`` back on open."""
    root, _ = libraries["jpg"]
    ds = di.from_csv(
        root / "boxes.csv",
        root=root,
        size=TARGET,
        resize="crop",
        boxes={"bbox": ["x0", "y0", "x1", "y1"]},
        mask_column="mask",
    )
    expected = dict(
        zip(
            ("bbox", "masks", "source_size"),
            dask.compute(ds.columns["bbox"], ds.columns["masks"], ds.columns["source_size"]),
            strict=True,
        )
    )
    out = di.to_zarr(ds, tmp_path / "b.zarr.zip", order="source", chunks=4)
    opened = di.open_zarr(out)
    for name, values in expected.items():
        np.testing.assert_array_equal(np.asarray(opened.arrays[name]), values, err_msg=name)
    assert opened.arrays["masks"].dtype == np.uint8
    assert opened.boxes == ("bbox",)  # the store's part: the root attribute daskimg.boxes


def test_masks_and_boxes_at_a_url_equal_local(libraries):
    fsspec = pytest.importorskip("fsspec")
    root, rows = libraries["png"]
    fs = fsspec.filesystem("memory")
    url = "memory://daskimg-test-boxes/lib"
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        fs.pipe(f"{url}/{f.relative_to(root).as_posix()}", f.read_bytes())
    try:
        kwargs = {
            "size": TARGET,
            "resize": "crop",
            "boxes": {"bbox": ["x0", "y0", "x1", "y1"]},
            "mask_column": "mask",
        }
        remote = di.from_csv(f"{url}/boxes.csv", root=url, **kwargs)
        local = di.from_csv(root / "boxes.csv", root=root, **kwargs)
        names = ("images", "bbox", "masks", "source_size")
        for name, a, b in zip(
            names,
            dask.compute(*(remote.arrays[k] for k in names)),
            dask.compute(*(local.arrays[k] for k in names)),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b, err_msg=name)
        # from_folder pairs masks by relative stem at a URL too
        img_url, mask_url = f"{url}/img", f"{url}/masks"
        folder = di.from_folder(img_url, size=TARGET, masks=mask_url)
        assert len(folder) == len(rows) and folder.labels is None
        got = folder.columns["masks"].compute()
        assert set(np.unique(got).tolist()) <= {MASK_BACKGROUND, MASK_OBJECT, MASK_SECOND}
    finally:
        fs.rm("/daskimg-test-boxes", recursive=True)


def test_boxes_and_masks_on_distributed(libraries, client):
    root, _ = libraries["jpg"]
    ds = di.from_csv(
        root / "boxes.csv",
        root=root,
        size=TARGET,
        resize="pad",
        boxes={"bbox": ["x0", "y0", "x1", "y1"]},
        mask_column="mask",
        chunks=4,
    )
    names = ("images", "bbox", "masks", "source_size")
    local = dask.compute(*(ds.arrays[k] for k in names), scheduler="threads")
    remote = client.gather(client.compute([ds.arrays[k] for k in names]))
    for name, a, b in zip(names, local, remote, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_one_blank_mask_shared_by_several_rows_is_read_for_each(tmp_path):
    # the check against a file on two rows refused a mask file several images share
    for name in ("a.png", "b.png", "c.png"):
        make_object_image((20, 30), (1, 1, 5, 5)).save(tmp_path / name)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(np.full((20, 30), 2, np.uint8)).save(tmp_path / "two.png")
    (tmp_path / "m.csv").write_text("path,mask\na.png,two.png\nb.png,blank.png\nc.png,blank.png\n")
    ds = di.from_csv(
        tmp_path / "m.csv", root=tmp_path, size=(10, 15), label_column=None, mask_column="mask"
    )
    got = ds.columns["masks"].compute()
    assert (got[0] == 2).all() and not got[1:].any()


def _box_csv(tmp_path, rows):
    csv = tmp_path / "boxes.csv"
    csv.write_text("path,x0,y0,x1,y1\n" + "".join(f"{p},{b}\n" for p, b in rows))
    return csv


@pytest.mark.parametrize(
    ("box", "shown"),
    [
        ("40,2,50,12", "40, 2, 50, 12"),  # right of the picture
        ("30,2,35,12", "30, 2, 35, 12"),  # from the right edge outwards: nothing inside
        ("1,-9,10,-1", "1, -9, 10, -1"),  # above it
        ("1,25,10,28", "1, 25, 10, 28"),  # in the frame of the stored, unrotated pixels
    ],
)
@pytest.mark.parametrize("scheduler", [None, "threads"])
def test_a_box_wholly_outside_its_image_is_an_error_naming_the_file(
    tmp_path, box, shown, scheduler
):
    # it was stored as NaN: the box lost without a word (a box in another frame: the
    # stored size, the picture before its EXIF rotation, another image's)
    upright = make_object_image((20, 30), (1, 1, 5, 5))
    upright.save(tmp_path / "a.png")
    save_oriented(upright, tmp_path / "b.jpg", orientation=6)  # stored 20 wide, 30 high
    upright.save(tmp_path / "c.png")
    csv = _box_csv(tmp_path, [("a.png", "1,2,10,12"), ("b.jpg", box), ("c.png", "25,2,32,12")])
    ds = di.from_csv(
        csv,
        root=tmp_path,
        size=(20, 30),
        label_column=None,
        boxes={"bbox": ["x0", "y0", "x1", "y1"]},
        chunks=1,
        on_error="skip",  # a box is not a file that fails to decode: never skipped
    )
    match = rf"b\.jpg'?: box 'bbox' \({shown}\) lies wholly outside the image, which is 30 x 20"
    with pytest.raises(ValueError, match=match):
        ds.columns["bbox"].compute()
    out = tmp_path / "o.zarr.zip"
    chosen = dask.config.set(scheduler=scheduler) if scheduler else contextlib.nullcontext()
    with chosen, pytest.raises(ValueError, match=match):
        di.to_zarr(ds, out)
    assert not out.exists()
    # a box that only reaches a little past an edge is clipped to the picture, as before
    # (far past: test_a_box_reaching_far_past_its_image_is_refused_not_clipped)
    _box_csv(tmp_path, [("a.png", "1,2,10,12"), ("b.jpg", "1,2,10,12"), ("c.png", "25,2,32,12")])
    ds = di.from_csv(
        csv, root=tmp_path, size=(20, 30), label_column=None, boxes={"b": ["x0", "y0", "x1", "y1"]}
    )
    di.to_zarr(ds, out, order="source", chunks=1)
    import zarr

    stored = zarr.open_group(zarr.storage.ZipStore(str(out), mode="r"), mode="r")["b"][...]
    np.testing.assert_array_equal(stored, [[1, 2, 10, 12], [1, 2, 10, 12], [25, 2, 30, 12]])


def test_a_store_written_from_a_store_keeps_what_maps_its_boxes_back(libraries, tmp_path):
    # to_zarr(open_zarr(s).take(...)) wrote attrs["source"] without size and resize:
    # to_source then failed, or with its default resize="stretch" gave other boxes
    root, rows = libraries["png"]
    ds, _ = _read(root, "pad", False)
    first = di.to_zarr(ds, tmp_path / "a.zarr.zip")
    part = di.open_zarr(first).take(np.arange(len(ds))[::2])
    second = di.open_zarr(di.to_zarr(part, tmp_path / "b.zarr.zip"))
    src = second.attrs["source"]
    assert (src["size"], src["resize"]) == (list(TARGET), "pad")
    back = to_source(
        np.asarray(second.columns["bbox"]),
        np.asarray(second.columns["source_size"]),
        size=src["size"],
        resize=src["resize"],
    )
    expected = {str(root / r["path"]): r["box"] for r in rows}  # oracle: the CSV's boxes
    for path, box in zip(second.paths, back, strict=True):
        np.testing.assert_allclose(box, expected[str(root / path)], atol=1e-3)


def test_corner_columns_read_as_numbers_and_jpeg_masks_are_named(tmp_path, caplog):
    import logging

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("L", (40, 30)).save(tmp_path / "a_mask.jpg")
    (tmp_path / "l.csv").write_text(
        "path,label,mask,xmin,ymin,xmax,ymax\na.png,cat,a_mask.jpg,1,2,10,20\n"
    )
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(15, 20), mask_column="mask")
    assert "'xmin', 'ymin', 'xmax', 'ymax' look like box corners" in caplog.text
    assert "are JPEGs: JPEG is lossy" in caplog.text
    assert ds.boxes == ()  # stored as given, and said so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_csv(
            tmp_path / "l.csv", root=tmp_path, size=(15, 20),
            boxes={"bbox": ["xmin", "ymin", "xmax", "ymax"]},
        )  # fmt: skip
    assert "look like box corners" not in caplog.text


@pytest.mark.parametrize(
    ("header", "named"),
    [
        ("x,y,w,h", "'h', 'w', 'x', 'y'"),  # COCO boxes
        ("bbox_x,bbox_y,bbox_width,bbox_height", "'bbox_height', 'bbox_width', 'bbox_x', 'bbox_y'"),
        ("kp_x,kp_y", "'kp_x', 'kp_y'"),  # a keypoint
        ("cx,cy", "'cx', 'cy'"),
        ("nose_x1,nose_y1", "'nose_x1', 'nose_y1'"),
    ],
)
def test_pixel_positions_read_as_numbers_are_named(tmp_path, caplog, header, named):
    # only corner names were warned about: x, y, w, h boxes and keypoints were stored in the
    # source's pixels beside resized images without a word
    import logging

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    values = ",".join(str(3 + i) for i in range(len(header.split(","))))
    (tmp_path / "l.csv").write_text(f"path,label,{header}\na.png,cat,{values}\n")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(tmp_path / "l.csv", root=tmp_path, size=(15, 20))
    assert f"columns {named}" in caplog.text and "look like pixel positions" in caplog.text
    assert set(header.split(",")) <= set(ds.columns)  # stored as given, and said so
    caplog.clear()
    (tmp_path / "m.csv").write_text("path,label,year,index,weight\na.png,cat,2020,3,0.5\n")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_csv(tmp_path / "m.csv", root=tmp_path, size=(15, 20))
    assert "pixel positions" not in caplog.text


def test_boxes_that_are_fractions_of_the_image_size_are_named(tmp_path, caplog):
    # YOLO / TensorFlow boxes in 0..1 passed every check as pixel boxes inside the top-left
    # pixel, then were scaled with the pixels into nothing
    import logging

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "b.png")
    corners = {"bbox": ["x0", "y0", "x1", "y1"]}
    (tmp_path / "f.csv").write_text("path,x0,y0,x1,y1\na.png,0.1,0.2,0.5,0.9\nb.png,,,,\n")
    (tmp_path / "p.csv").write_text("path,x0,y0,x1,y1\na.png,0,0,1,1\nb.png,4,2,30,25\n")
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(
            tmp_path / "f.csv", root=tmp_path, size=(15, 20), boxes=corners, label_column=None
        )
    assert "every box 'bbox' lies within 0..1" in caplog.text
    np.testing.assert_allclose(ds.columns["bbox"][0].compute(), [0.05, 0.1, 0.25, 0.45])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        di.from_csv(
            tmp_path / "p.csv", root=tmp_path, size=(15, 20), boxes=corners, label_column=None
        )
    assert "within 0..1" not in caplog.text  # a pixel box among them: pixels


def _png16(path, ids: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG of ``ids`` in every channel (2: RGB, 4: gray+alpha), which Pillow cannot
    write; the oracle is the values written."""
    import struct
    import zlib

    channels = {2: 3, 4: 2}[color_type]
    pixels = np.repeat(ids[..., None], channels, axis=-1).astype(">u2")
    if color_type == 4:
        pixels[..., 1] = 65535
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    h, w = ids.shape
    head = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))  # fmt: skip


def test_mask_files_whose_ids_pillow_would_change_are_refused(tmp_path):
    # 16-bit colour masks came back at 8 bits (ids 700, 1200 as 2, 4), a multi-page TIFF
    # mask lost every page but the first, lossy content not named .jpg gave new ids: silently
    import tifffile

    make_object_image((20, 30), (1, 1, 5, 5)).save(tmp_path / "a.png")
    ids = np.zeros((20, 30), np.uint16)
    ids[2:8, 3:9], ids[10:15, 12:20] = 700, 1200
    _png16(tmp_path / "rgb16.png", ids, 2)
    _png16(tmp_path / "la16.png", ids, 4)
    tifffile.imwrite(
        tmp_path / "rgb16.tif", np.repeat(ids[..., None], 3, axis=-1), photometric="rgb"
    )
    tifffile.imwrite(tmp_path / "pages.tif", np.stack([ids > 0, ids > 700]).astype(np.uint8))
    small = Image.fromarray((ids // 10).astype(np.uint8))
    small.save(tmp_path / "jpeg_named.png", format="JPEG")
    small.save(tmp_path / "lossy.webp")  # Pillow's WebP default: lossy
    small.save(tmp_path / "lossless.webp", lossless=True)
    csv = tmp_path / "m.csv"

    def read(mask: str, dtype: str = "uint16") -> np.ndarray:
        csv.write_text(f"path,mask\na.png,{mask}\n")
        ds = di.from_csv(csv, root=tmp_path, size=(20, 30), label_column=None,
                         mask_column="mask", mask_dtype=dtype)  # fmt: skip
        return ds.columns["masks"].compute()[0]

    with Image.open(tmp_path / "rgb16.png") as im:  # the oracle: Pillow reads it at 8 bits
        assert im.mode == "RGB" and np.asarray(im)[2, 3, 0] != 700 % 256
    for name in ("rgb16.png", "la16.png", "rgb16.tif"):
        with pytest.raises(DecodeError, match=rf"{name}.*16-bit colour \(or gray\+alpha\)"):
            read(name)
    with pytest.raises(DecodeError, match=r"pages\.tif.*has 2 pages; a mask is one page"):
        read("pages.tif", "uint8")
    for name, kind in (("jpeg_named.png", "JPEG"), ("lossy.webp", "WEBP")):
        with pytest.raises(DecodeError, match=rf"{name}.*holds a lossy {kind} image"):
            read(name, "uint8")
    np.testing.assert_array_equal(read("lossless.webp", "uint8"), ids // 10)  # lossless: read
    # a gray mask saved as GIF: the writer numbers the grays per file (ids 0, 70, 120 as
    # indices 0, 1, 2 here, and 0, 120 as 0, 1 in a file without 70): refused, not indices
    gray = (ids // 10).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.gif")
    with Image.open(tmp_path / "gray.gif") as im:  # the oracle: Pillow's indices, its grays
        assert im.mode == "P" and (np.asarray(im.convert("L")) == gray).all()
        assert not (np.asarray(im) == gray).all()
    with pytest.raises(DecodeError, match=r"gray\.gif.*palette mask whose colours are grays"):
        read("gray.gif", "uint8")
    # a palette whose grays are its indices, and a palette of colours (Pascal VOC), are read
    for name, colours in (("same.png", [0, 0, 0, 1, 1, 1, 2, 2, 2]), ("voc.png", [0, 0, 0,
                          128, 0, 0, 0, 128, 0])):  # fmt: skip
        p = Image.fromarray(np.minimum(ids // 600, 2).astype(np.uint8), mode="P")
        p.putpalette(colours)
        p.save(tmp_path / name)
        np.testing.assert_array_equal(read(name, "uint8"), np.minimum(ids // 600, 2))
    # black and white: a binary mask's palette (Carvana's GIFs, 1-bit PNGs), either way round
    for name, colours in (("bw.gif", [0, 0, 0, 255, 255, 255]), ("wb.png", [255] * 3 + [0] * 3)):
        p = Image.fromarray((ids > 0).astype(np.uint8), mode="P")
        p.putpalette(colours)
        p.save(tmp_path / name)
        np.testing.assert_array_equal(read(name, "uint8"), ids > 0)
    Image.fromarray(ids > 0).save(tmp_path / "one-bit.png")  # mode 1
    np.testing.assert_array_equal(read("one-bit.png", "uint8"), ids > 0)


def test_a_box_reaching_far_past_its_image_is_refused_not_clipped(tmp_path):
    # a box drawn on the picture before its EXIF rotation (a tool that ignores the tag)
    # reached 90 px past the upright image's right edge and was cut to it without a word
    upright = Image.new("RGB", (300, 400), (90, 90, 90))  # shown 300 wide, 400 tall
    save_oriented(upright, tmp_path / "a.jpg", orientation=6)
    with Image.open(tmp_path / "a.jpg") as f:
        assert f.size == (400, 300)  # stored as the camera did
    corners = {"bbox": ["x0", "y0", "x1", "y1"]}
    (tmp_path / "raw.csv").write_text("path,x0,y0,x1,y1\na.jpg,220,40,390,200\n")
    ds = di.from_csv(
        tmp_path / "raw.csv", root=tmp_path, size=(100, 100), boxes=corners, label_column=None
    )
    with pytest.raises(ValueError, match=r"a\.jpg'.*box 'bbox' \(220, 40, 390, 200\) reaches far"):
        di.to_zarr(ds, tmp_path / "s.zarr.zip")
    assert not (tmp_path / "s.zarr.zip").exists()
    # a few pixels past the edge (an annotator's overshoot), or past the left or top edge
    # by any amount (no other frame gives negative corners), is clipped, as before
    (tmp_path / "near.csv").write_text("path,x0,y0,x1,y1\na.jpg,-60,40,309,420\n")
    ds = di.from_csv(
        tmp_path / "near.csv", root=tmp_path, size=(100, 100), boxes=corners, label_column=None
    )
    out = di.to_zarr(ds, tmp_path / "n.zarr.zip")
    oracle = np.clip([-60, 40, 309, 420], 0, [300, 400, 300, 400]) * np.array(
        [100 / 300, 100 / 400] * 2
    )
    np.testing.assert_allclose(zarr_boxes(out)[0], oracle, rtol=1e-6)


def test_fraction_boxes_among_pixel_boxes_are_named(tmp_path, caplog):
    # a CSV put together from a YOLO export and a pixel export: one pixel row silenced the
    # 0..1 warning, and the fractions were stored as boxes inside the top-left pixel
    for i in range(4):
        Image.new("RGB", (200, 100)).save(tmp_path / f"{i}.png")
    (tmp_path / "b.csv").write_text(
        "path,x0,y0,x1,y1\n0.png,0.1,0.1,0.4,0.5\n1.png,20,20,120,80\n"
        "2.png,0.05,0.1,0.3,0.9\n3.png,0,0,1,1\n"
    )
    corners = {"bbox": ["x0", "y0", "x1", "y1"]}
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        ds = di.from_csv(
            tmp_path / "b.csv", root=tmp_path, size=(50, 100), boxes=corners, label_column=None
        )
    assert "2 of 4 boxes 'bbox' lie within 0..1" in caplog.text  # not (0, 0, 1, 1): a pixel
    assert "0.png" in caplog.text and "(0.1, 0.1, 0.4, 0.5)" in caplog.text
    np.testing.assert_allclose(ds.columns["bbox"][1].compute(), [10, 10, 60, 40])  # as given


def test_boxes_named_as_an_array_derived_from_the_files_are_refused(tmp_path):
    # boxes={"source_size": [...]} replaced the files' own sizes in the store without a word
    # (the same name in columns= was refused)
    from PIL import Image

    Image.new("RGB", (100, 60)).save(tmp_path / "a.png")
    (tmp_path / "b.csv").write_text("path,label,x0,y0,x1,y1\na.png,obj,10,10,30,40\n")
    for name in ("source_size", "masks"):
        with pytest.raises(ValueError, match=rf"boxes names \['{name}'\] are taken"):
            di.from_csv(
                tmp_path / "b.csv", root=tmp_path, size=(30, 50),
                boxes={name: ["x0", "y0", "x1", "y1"]},
            )  # fmt: skip
    ds = di.from_csv(
        tmp_path / "b.csv", root=tmp_path, size=(30, 50), boxes={"bbox": ["x0", "y0", "x1", "y1"]}
    )
    np.testing.assert_array_equal(ds.columns["source_size"].compute(), [[60, 100]])  # Pillow's
