"""Flips and crops move boxes and masks with their images: checked against plain numpy."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from daskimg.transforms import compose, random_crop, random_flip


def _batch(n: int = 16, h: int = 12, w: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    x0 = rng.integers(0, w - 1, n)
    y0 = rng.integers(0, h - 1, n)
    x1 = np.minimum(w, x0 + rng.integers(1, w, n))
    y1 = np.minimum(h, y0 + rng.integers(1, h, n))
    boxes = np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)
    boxes[3] = np.nan  # a sample without a box
    masks = np.zeros((n, h, w), np.uint8)
    for i, (a, b, c, d) in enumerate(boxes):
        if np.isfinite(a):
            masks[i, int(b) : int(d), int(a) : int(c)] = 1 + i % 5
    return {"images": images, "bbox": boxes, "masks": masks, "labels": np.arange(n)}


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """The rectangle a painted mask covers (x0, y0, x1, y1), NaN if none is left."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.full(4, np.nan)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_flip_moves_boxes_and_masks_like_numpy(p):
    batch = _batch()
    out = random_flip(p=p, boxes=("bbox",), masks=("masks",))(batch, np.random.default_rng(7))
    which = np.random.default_rng(7).random(len(batch["images"])) < p
    w = batch["images"].shape[2]
    for i in range(len(which)):
        flip = (lambda a: a[:, ::-1]) if which[i] else (lambda a: a)
        np.testing.assert_array_equal(out["images"][i], flip(batch["images"][i]))
        np.testing.assert_array_equal(out["masks"][i], flip(batch["masks"][i]))
        b = batch["bbox"][i]
        expected = [w - b[2], b[1], w - b[0], b[3]] if which[i] else b
        np.testing.assert_array_equal(out["bbox"][i], expected)
        # the oracle independent of the formula: the box is where the mask is
        np.testing.assert_array_equal(out["bbox"][i], _mask_box(out["masks"][i]))
    np.testing.assert_array_equal(out["labels"], batch["labels"])
    # the input batch is not modified
    np.testing.assert_array_equal(batch["bbox"], _batch()["bbox"])


def test_crop_moves_clips_and_nans_boxes_like_numpy():
    batch = _batch(n=64)
    h, w = 6, 9
    out = random_crop((h, w), boxes=("bbox",), masks=("masks",))(batch, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    n, H, W = batch["images"].shape[:3]
    top = rng.integers(0, H - h + 1, n)
    left = rng.integers(0, W - w + 1, n)
    gone = 0
    for i in range(n):
        cut = np.s_[top[i] : top[i] + h, left[i] : left[i] + w]
        np.testing.assert_array_equal(out["images"][i], batch["images"][i][cut])
        np.testing.assert_array_equal(out["masks"][i], batch["masks"][i][cut])
        expected = _mask_box(out["masks"][i])
        np.testing.assert_array_equal(out["bbox"][i], expected, err_msg=str(i))
        gone += np.isnan(expected).all() and np.isfinite(batch["bbox"][i]).all()
    assert gone >= 1  # some boxes were cropped away and became NaN
    assert out["bbox"].dtype == np.float32


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint64])
def test_integer_boxes_come_out_as_floats_that_flip_and_crop_like_numpy(dtype):
    # integer boxes (a store written elsewhere, a dict fed as is) came out in their own dtype:
    # an unsigned box flipped past the left edge wrapped to 65531, a box cropped away became
    # -2**31 (numpy's cast of NaN) instead of NaN, with only a RuntimeWarning
    batch = _batch(n=64)
    ints = dict(batch, bbox=np.nan_to_num(batch["bbox"], nan=0).astype(dtype))
    ints["bbox"][3] = [1, 1, 4, 4]  # _batch's sample without a box (NaN)
    ints["bbox"][5] = [14, 2, 30, 6]  # reaches past the right edge (w = 20): flips to x0 = -10
    want = np.float32 if np.dtype(dtype).itemsize <= 2 else np.float64
    flipped = random_flip(p=1.0, boxes=("bbox",))(ints, np.random.default_rng(0))["bbox"]
    assert flipped.dtype == want
    b = ints["bbox"].astype(np.float64)  # the oracle: numpy on exact floats
    np.testing.assert_array_equal(
        flipped, np.stack([20 - b[:, 2], b[:, 1], 20 - b[:, 0], b[:, 3]], 1)
    )
    assert flipped[5].tolist() == [-10, 2, 6, 6]
    rng = np.random.default_rng(3)
    cropped = random_crop((6, 9), boxes=("bbox",))(ints, rng)["bbox"]
    assert cropped.dtype == want
    rng = np.random.default_rng(3)
    top, left = rng.integers(0, 12 - 6 + 1, 64), rng.integers(0, 20 - 9 + 1, 64)
    shifted = b - np.stack([left, top, left, top], 1)
    inside = np.clip(shifted, 0, [9, 6, 9, 6])
    gone = (inside[:, 2] <= inside[:, 0]) | (inside[:, 3] <= inside[:, 1])  # nothing inside
    assert gone.any() and (~gone).any()
    assert np.isnan(cropped[gone]).all()
    np.testing.assert_array_equal(cropped[~gone], inside[~gone])


def test_compose_flip_then_crop_keeps_boxes_on_masks():
    batch = _batch(n=32, seed=4)
    t = compose(
        random_flip(boxes=("bbox",), masks=("masks",)),
        random_crop((8, 14), boxes=("bbox",), masks=("masks",)),
    )
    out = t(batch, np.random.default_rng(0))
    for i in range(32):
        np.testing.assert_array_equal(out["bbox"][i], _mask_box(out["masks"][i]))


def test_transform_errors_name_the_array():
    batch = _batch()
    with pytest.raises(KeyError, match=r"boxes names 'box', which is not in the batch"):
        random_flip(p=1.0, boxes=("box",))(batch, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"masks array 'bbox' must have shape"):
        random_crop((4, 4), masks=("bbox",))(batch, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"boxes=\('bbox',\)"):
        random_flip(boxes="bbox")


@pytest.mark.parametrize("size", [(0, 4), (4, -1), (4,), (2, 3, 4), (3.7, 4), (True, 2), ("3", 2)])
def test_crop_size_must_be_two_positive_numbers(size):
    # (3.7, 4) was cropped as (3, 4), (True, 2) as (1, 2), ("3", 2) as (3, 2)
    with pytest.raises(ValueError, match="random_crop"):
        random_crop(size)
    for p in ("0.5", None, True, 1.5):  # "0.5" was a bare TypeError from a comparison
        with pytest.raises(ValueError, match="p must be a number in"):
            random_flip(p=p)


def test_a_crop_keeps_float64_boxes_exact_and_a_transform_s_scalar_is_named():
    # clip_boxes went through float32: 2000.123456789 came out 2000.1234130859375 (float64)
    from daskimg.feed.iterator import check_transformed

    x = np.zeros((1, 40, 3000, 3), np.uint8)
    box = np.array([[2000.123456789, 1.000000001, 2500.987654321, 30.5]])
    got = random_crop((40, 3000), boxes=("bbox",))(
        {"images": x, "bbox": box}, np.random.default_rng(0)
    )
    assert got["bbox"].dtype == np.float64
    np.testing.assert_array_equal(got["bbox"], box)  # the whole image: nothing moves
    with pytest.raises(ValueError, match="returned 'labels' with no rows for a batch of 2"):
        check_transformed(None, ("labels",), {"labels": np.float32(1)}, 2)


@pytest.fixture
def boxed_store(tmp_path):
    import daskimg as di

    b = _batch(n=12)
    ds = di.ImageSet(b["images"], columns={"bbox": b["bbox"], "masks": b["masks"]}, boxes=("bbox",))
    return di.to_zarr(ds, tmp_path / "boxed.zarr.zip", chunks=4, order="source"), b


def test_the_feed_refuses_a_flip_or_crop_that_would_leave_fed_boxes_or_masks_behind(boxed_store):
    # random_flip() without boxes= flipped the images and handed the boxes out unflipped
    import daskimg as di

    path, b = boxed_store
    fed = ("images", "bbox", "masks", "index")
    for t, left in [
        (random_flip(p=1.0), r"boxes \['bbox'\]"),
        (random_flip(p=1.0, boxes=("bbox",)), r"masks \['masks'\]"),
        (
            compose(random_flip(p=1.0, boxes=("bbox",), masks=("masks",)), random_crop((6, 9))),
            r"boxes \['bbox'\]",
        ),
    ]:
        with pytest.raises(ValueError, match=f"moves the pixels of 'images' but not the {left}"):
            di.BatchIterator(path, batch_size=4, arrays=fed, transform=t)
    # given both, every box is still where its mask is, and the pixels are the stored ones flipped
    t = random_flip(p=1.0, boxes=("bbox",), masks=("masks",))
    for images, bbox, masks, index in di.BatchIterator(path, batch_size=5, arrays=fed, transform=t):
        for i, k in enumerate(index.tolist()):
            np.testing.assert_array_equal(images[i], b["images"][k][:, ::-1])
            np.testing.assert_array_equal(bbox[i], _mask_box(masks[i]))
    # boxes not fed: nothing to move with the pixels
    assert len(list(di.BatchIterator(path, batch_size=4, transform=random_flip(p=1.0)))) == 3
    # masks given to the flip but not fed: refused when made (a KeyError at the first batch,
    # from the loader's thread)
    for t in (random_flip(masks=("masks",)), compose(random_crop((6, 9), boxes=("bbox",)))):
        with pytest.raises(ValueError, match=r"moves \['(masks|bbox)'\], which the batches do not"):
            di.BatchIterator(path, batch_size=4, arrays=("images",), transform=t)

    def add_fg(batch, rng):  # a step of the caller's own that adds the mask a flip moves
        return {**batch, "fg": (batch["images"][..., 0] > 0).astype(np.uint8)}

    t = compose(add_fg, random_flip(p=1.0, masks=("fg",)))
    for images, index in di.BatchIterator(
        path, batch_size=4, arrays=("images", "index"), transform=t
    ):
        np.testing.assert_array_equal(images, b["images"][index][:, :, ::-1])


def test_the_adapters_refuse_a_flip_that_would_leave_fed_boxes_behind(boxed_store):
    path, _ = boxed_store
    torch_adapter = pytest.importorskip("daskimg.torch")
    with pytest.raises(ValueError, match=r"not the boxes \['bbox'\]"):
        torch_adapter.TorchDataset(
            path, batch_size=4, arrays=("images", "bbox"), transform=random_flip(p=1.0)
        )
    keras_adapter = pytest.importorskip("daskimg.keras")
    with pytest.raises(ValueError, match=r"not the boxes \['bbox'\]"):
        keras_adapter.KerasDataset(
            path, batch_size=4, arrays=("images", "bbox"), transform=random_flip(p=1.0)
        )


def test_the_feed_checks_masks_of_any_source_and_hand_built_composes():
    import daskimg as di
    from daskimg.transforms import Compose

    b = _batch(n=8)
    src = {"images": b["images"], "masks": b["masks"]}
    for t in (random_flip(p=1.0), Compose([random_flip(p=1.0)])):
        with pytest.raises(ValueError, match=r"not the masks \['masks'\]"):
            di.BatchIterator(src, batch_size=4, arrays=("images", "masks"), transform=t)
    t = Compose([random_flip(p=1.0, masks=("masks",))])
    it = di.BatchIterator(src, batch_size=4, arrays=("images", "masks"), transform=t, shuffle=False)
    got = np.concatenate([masks for _, masks in it])
    np.testing.assert_array_equal(got, b["masks"][:, :, ::-1])  # numpy's flip is the oracle


def test_masks_with_a_channel_axis_move_with_the_pixels_and_are_not_left_behind():
    # (N, H, W, 1) masks (as many segmentation sets store them) were not moved by the flips
    # and crops, and the feed did not ask for them: handed out where the object had been
    import daskimg as di

    b = _batch(n=8)
    masks = np.stack([b["masks"], 255 - b["masks"]], axis=-1)  # (N, H, W, 2)
    src = {"images": b["images"], "masks": masks}
    with pytest.raises(ValueError, match=r"not the masks \['masks'\]"):
        di.BatchIterator(
            src, batch_size=4, arrays=("images", "masks"), transform=random_flip(p=1.0)
        )
    it = di.BatchIterator(
        src, batch_size=4, arrays=("images", "masks"), shuffle=False,
        transform=random_flip(p=1.0, masks=("masks",)),
    )  # fmt: skip
    got = np.concatenate([m for _, m in it])
    np.testing.assert_array_equal(got, masks[:, :, ::-1])  # numpy's flip is the oracle
    crop = random_crop((3, 4), masks=("masks",))
    out = crop({"images": b["images"], "masks": masks}, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    n, H, W = b["images"].shape[:3]
    top, left = rng.integers(0, H - 3 + 1, n), rng.integers(0, W - 4 + 1, n)
    for i in range(n):  # the pixels and the masks cut at the same place
        np.testing.assert_array_equal(
            out["masks"][i], masks[i, top[i] : top[i] + 3, left[i] : left[i] + 4]
        )
        np.testing.assert_array_equal(
            out["images"][i], b["images"][i, top[i] : top[i] + 3, left[i] : left[i] + 4]
        )


def test_a_predicted_mask_written_back_is_not_left_behind_by_a_flip(tmp_path):
    # a mask-shaped array under another name (ArrayWriter's pred_mask) was fed unflipped
    # beside flipped pixels: 64 of 64 samples disagreed after the flip, without an error
    import daskimg as di

    b = _batch(n=8)
    path = di.to_zarr(di.ImageSet(b["images"]), tmp_path / "s.zarr.zip", order="source")
    with di.ArrayWriter(
        path, name="pred_mask", shape=b["masks"].shape[1:], dtype="uint8", mode="a"
    ) as w:
        w.append(b["masks"], index=np.arange(len(b["masks"])))
    with pytest.raises(ValueError, match=r"not the masks \['pred_mask'\]"):
        di.BatchIterator(
            path, batch_size=4, arrays=("images", "pred_mask"), transform=random_flip(p=1.0)
        )
    it = di.BatchIterator(
        path, batch_size=4, arrays=("images", "pred_mask", "index"), shuffle=False,
        transform=random_flip(p=1.0, masks=("pred_mask",)),
    )  # fmt: skip
    for images, pred, index in it:  # numpy's flip is the oracle
        np.testing.assert_array_equal(images, b["images"][index][:, :, ::-1])
        np.testing.assert_array_equal(pred, b["masks"][index][:, :, ::-1])
    # an array of another shape is not taken for a mask, but for a map the flip was not
    # told about (a stride-2 segmentation as well as scores): fixed= says it stays
    scores = {"images": b["images"], "score": np.zeros((8, 12, 3), np.float32)}
    with pytest.raises(ValueError, match=r"'score' \(\[12, 3\] float32 .*looks like a map"):
        di.BatchIterator(scores, batch_size=4, arrays=("images", "score"), transform=random_flip())
    t = random_flip(fixed=("score",))
    di.BatchIterator(scores, batch_size=4, arrays=("images", "score"), transform=t)


def test_the_feed_takes_box_named_arrays_of_a_dict_for_boxes():
    # a dict source said nothing of boxes: a flip without boxes= flipped the pixels and
    # handed its "bbox" out unflipped
    import daskimg as di

    b = _batch(n=12)
    source = {"images": b["images"], "gt_boxes": b["bbox"], "labels": b["labels"]}
    fed = ("images", "gt_boxes", "index")
    with pytest.raises(ValueError, match=r"not the boxes \['gt_boxes'\]"):
        di.BatchIterator(source, batch_size=4, arrays=fed, transform=random_flip(p=1.0))
    t = random_flip(p=1.0, boxes=("gt_boxes",))
    w = b["images"].shape[2]
    for images, boxes, index in di.BatchIterator(source, batch_size=4, arrays=fed, transform=t):
        np.testing.assert_array_equal(images, b["images"][index][:, :, ::-1])
        given = b["bbox"][index]
        flipped = np.stack([w - given[:, 2], given[:, 1], w - given[:, 0], given[:, 3]], 1)
        np.testing.assert_array_equal(boxes, flipped)
    # an (N, 4) array not named as boxes is the caller's own
    other = {"images": b["images"], "rgba_mean": b["bbox"]}
    assert len(list(di.BatchIterator(other, batch_size=4, transform=random_flip(p=1.0)))) == 3
    # named as boxes only: the message says why and how to opt out; values are the caller's
    # (a lazy one in another order, y0 x0 y1 x1 past the images, is fed as given)
    import dask.array as da

    yxyx = da.from_array(b["bbox"][:, [1, 0, 3, 2]] + 100, chunks=(4, 4))
    lazy = {"images": b["images"], "gt_boxes": yxyx}
    with pytest.raises(ValueError, match=r"named with 'box' count as boxes where .* rename one"):
        di.BatchIterator(lazy, batch_size=4, arrays=("images", "gt_boxes"), transform=random_flip())
    fed = [
        g
        for _, g in di.BatchIterator(
            lazy, batch_size=4, shuffle=False, arrays=("images", "gt_boxes")
        )
    ]
    np.testing.assert_array_equal(np.concatenate(fed), yxyx.compute())


def test_boxes_written_back_to_a_store_move_with_a_flip_or_are_refused(tmp_path):
    # predicted boxes added with ArrayWriter(mode="a") are not among the store's declared
    # boxes: a flip moved the pixels and handed the boxes out where they were
    import daskimg as di

    b = _batch(n=12)
    store = di.to_zarr(di.ImageSet(b["images"], b["labels"] % 3, classes=["a", "b", "c"]),
                       tmp_path / "s.zarr.zip", chunks=4)  # fmt: skip
    with di.ArrayWriter(store, name="pred_boxes", shape=(4,), dtype="float32", mode="a") as wr:
        wr.append(b["bbox"].astype(np.float32), index=np.arange(12))
    fed = ("images", "pred_boxes", "index")
    with pytest.raises(ValueError, match=r"not the boxes \['pred_boxes'\]"):
        di.BatchIterator(store, batch_size=4, arrays=fed, transform=random_flip(p=1.0))
    t = random_flip(p=1.0, boxes=("pred_boxes",))
    plain = zarr.open_group(zarr.storage.ZipStore(store, mode="r"), mode="r")
    stored, pixels = plain["pred_boxes"][...], plain["images"][...]  # the oracle: plain zarr
    w = pixels.shape[2]
    for images, boxes, index in di.BatchIterator(store, batch_size=4, arrays=fed, transform=t):
        np.testing.assert_array_equal(images, pixels[index][:, :, ::-1])
        given = stored[index]
        flipped = np.stack([w - given[:, 2], given[:, 1], w - given[:, 0], given[:, 3]], 1)
        np.testing.assert_array_equal(boxes, flipped)


def test_a_flip_or_crop_is_refused_beside_boxes_or_masks_it_cannot_move():
    # a detector's (N, K, 4) boxes and a stride-2 segmentation written back were handed out
    # unmoved beside flipped pixels; the oracle: numpy's flip of the pixels
    import daskimg as di

    n, h, w = 8, 32, 48
    images = np.zeros((n, h, w, 3), np.uint8)
    images[:, 4:20, 2:12] = 255
    k_boxes = np.tile(np.float32([2, 4, 12, 20]), (n, 3, 1))
    half = np.zeros((n, h // 2, w // 2), np.uint8)
    for name, extra in (("pred_boxes", k_boxes), ("masks", half), ("pred_mask", half)):
        src = {"images": images, name: extra}
        for t in (random_flip(p=1.0), random_crop((16, 16))):
            with pytest.raises(ValueError, match=rf"not '{name}' .* which it cannot move"):
                di.BatchIterator(src, batch_size=4, arrays=("images", name), transform=t)
        fed = di.BatchIterator(src, batch_size=4, shuffle=False, arrays=("images", name))
        got = np.concatenate([b[1] for b in fed])  # without a transform: fed as they are
        np.testing.assert_array_equal(got, extra)
    flipped = di.BatchIterator(
        {"images": images, "labels": np.arange(n)}, batch_size=4, shuffle=False,
        transform=random_flip(p=1.0),
    )  # fmt: skip
    np.testing.assert_array_equal(np.concatenate([b[0] for b in flipped]), images[:, :, ::-1])


def test_written_back_arrays_that_look_like_geometry_are_not_left_behind_by_a_flip_or_crop(
    tmp_path,
):
    # columns written back under names without 'box' or 'mask' (a detector's 'detections',
    # 'det_xyxy', a stride-2 'seg_lowres') were handed out unmoved beside flipped pixels
    import daskimg as di

    n = 16
    images = np.zeros((n, 16, 16, 3), np.uint8)
    images[:, :, :4] = 255  # a bright left strip: where the pixels went
    path = di.to_zarr(di.ImageSet(images), tmp_path / "s.zarr.zip", chunks=8, order="source")
    det = np.tile(np.array([0.0, 0.0, 4.0, 16.0], np.float32), (n, 1))
    with di.ArrayWriter(
        path,
        arrays={
            "detections": ((2, 4), "float32"),
            "det_xyxy": ((4,), "float32"),
            "seg_lowres": ((8, 8), "uint8"),
            "probs": ((4,), "float32"),
            "emb": ((32,), "float32"),
        },
        mode="a",
    ) as w:
        w.append(
            detections=np.stack([det, det], axis=1),
            det_xyxy=det,
            seg_lowres=np.zeros((n, 8, 8), np.uint8),
            probs=np.full((n, 4), 0.25, np.float32),
            emb=np.zeros((n, 32), np.float32),
            index=np.arange(n),
        )
    cases = [
        (
            "det_xyxy",
            random_flip(),
            r"'det_xyxy' \(\[4\] float32 .*looks like boxes.*boxes=\('det_xyxy',\)",
        ),
        ("detections", random_flip(), r"'detections' \(\[2, 4\] float32 .*looks like boxes"),
        ("seg_lowres", random_crop((8, 8)), r"'seg_lowres' \(\[8, 8\] uint8 .*looks like a map"),
        ("probs", random_flip(), r"fixed=\('probs',\)"),
    ]

    def brighten(batch, rng):  # a step of the caller's before the flip moves none of them
        return batch

    cases.append(("detections", compose(brighten, random_flip()), r"'detections'.*looks like"))
    for name, t, said in cases:
        with pytest.raises(ValueError, match=said):
            di.BatchIterator(path, batch_size=4, arrays=("images", name), transform=t)
    # whole-number boxes too; one-hot labels are no geometry
    dicts = {"images": images, "dets": det.astype(np.int32), "labels": np.eye(4)[np.arange(n) % 4]}
    with pytest.raises(ValueError, match=r"'dets' \(\[4\] int32 .*looks like boxes"):
        di.BatchIterator(dicts, batch_size=4, arrays=("images", "dets"), transform=random_flip())
    di.BatchIterator(dicts, batch_size=4, arrays=("images", "labels"), transform=random_flip())
    # fixed= also keeps what daskimg takes for boxes by its name; not beside boxes= of it
    boxed = {"images": images, "pred_boxes": det}
    with pytest.raises(
        ValueError, match=r"not the boxes \['pred_boxes'\].*fixed=\('pred_boxes',\)"
    ):
        di.BatchIterator(
            boxed, batch_size=4, arrays=("images", "pred_boxes"), transform=random_flip()
        )
    t = random_flip(p=1.0, fixed=("pred_boxes",))
    for _, kept in di.BatchIterator(
        boxed, batch_size=4, arrays=("images", "pred_boxes"), transform=t
    ):
        np.testing.assert_array_equal(kept, det[: len(kept)])
    with pytest.raises(
        ValueError, match=r"fixed= names \['pred_boxes'\], which the transform also moves"
    ):
        random_flip(boxes=("pred_boxes",), fixed=("pred_boxes",))
    # said, they move or stay; 1-D features are no geometry
    it = di.BatchIterator(
        path, batch_size=4, arrays=("images", "det_xyxy", "probs", "emb"), shuffle=False,
        transform=random_flip(p=1.0, boxes=("det_xyxy",), fixed=("probs",)),
    )  # fmt: skip
    for x, boxes, probs, _ in it:  # numpy is the oracle: the strip and its box on the right
        np.testing.assert_array_equal(x, images[: len(x), :, ::-1])
        np.testing.assert_array_equal(boxes, np.tile([12.0, 0.0, 16.0, 16.0], (len(x), 1)))
        np.testing.assert_array_equal(probs, np.full((len(x), 4), 0.25))
