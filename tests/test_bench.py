from __future__ import annotations

import numpy as np
import pytest
from conftest import plain_group

import daskimg as di
from daskimg.bench import (
    CodecResult,
    Hdf5Result,
    compare_codecs,
    evict,
    measure_hdf5,
    recommend,
    sample_count,
    size_summary,
)
from daskimg.cli import main


def test_compare_codecs_measures_each_codec_on_a_copy(tmp_path):
    di.testing.make_photo_folder(tmp_path / "src", n_per_class=20, classes=("chelsea", "coffee"))
    photos = di.from_folder(tmp_path / "src", size=(32, 32))
    path = di.to_zarr(photos, tmp_path / "s.zarr.zip", chunks=8)
    seen = []
    rows = compare_codecs(
        path, samples=24, epochs=1, batch_size=8, progress=lambda c, r: seen.append((c, r))
    )
    assert [r.codec for r in rows] == ["lz4", "zstd", "none", "jpeg:90", "jpeg:75"]
    # a call when each codec starts and one with its result when it is measured, in order
    assert seen == [e for r in rows for e in ((r.codec, None), (r.codec, r))]
    stored = plain_group(path)["images"][:24]
    for r in rows:
        assert r.warm > 0 and r.cold > 0 and r.write > 0
        # the projected size is the whole store's raw size over the measured ratio
        assert r.store_bytes == int(stored[0].nbytes * 40 / r.ratio)
        assert (r.psnr == np.inf) == (not r.codec.startswith("jpeg"))
    q90, q75 = rows[-2:]
    assert 20 < q75.psnr < q90.psnr < 60 and q75.ratio > q90.ratio
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr.zip", "src"]  # copies removed


def test_compare_codecs_leaves_out_jpeg_for_data_it_cannot_hold(tmp_path):
    ds = di.ImageSet(np.zeros((16, 4, 4, 2), np.uint8), np.zeros(16, int), classes=["a"])
    path = di.to_zarr(ds, tmp_path / "two.zarr.zip", chunks=4)
    assert [r.codec for r in compare_codecs(path, samples=8, epochs=1)] == ["lz4", "zstd", "none"]
    with pytest.raises(ValueError, match="jpeg:Q"):  # a typo fails before anything is measured
        compare_codecs(path, samples=8, epochs=1, codecs=["lz4", "jepg"])
    with pytest.raises(ValueError, match=r"JPEG cannot hold.*add lz4, zstd or none"):
        compare_codecs(path, samples=8, epochs=1, codecs=["jpeg", "jpeg:75"])


def _row(codec, ratio, warm, cold, lossy=False, size=10**9):
    return CodecResult(codec, ratio, warm, cold, 38.0 if lossy else float("inf"), size)


ROWS = [
    _row("lz4", 1.1, 20_000, 5_000, size=900),
    _row("zstd", 1.3, 9_000, 4_500, size=760),
    _row("none", 1.0, 30_000, 4_000, size=1000),
    _row("jpeg", 9.0, 7_000, 7_000, lossy=True, size=110),
]


def test_recommend_picks_the_most_faithful_lossy_codec_that_keeps_up():
    rows = [
        *ROWS[:3],
        CodecResult("jpeg:90", 9.0, 7_000, 7_000, 38.0, 110),
        CodecResult("jpeg:75", 14.0, 9_000, 9_000, 35.0, 70),
    ]
    assert recommend(rows, target=6_000, memory=1_000).codec == "jpeg:90"
    assert recommend(rows, target=8_000, memory=1_000).codec == "jpeg:75"


@pytest.mark.parametrize(
    ("target", "memory", "expected", "meets"),
    [
        (None, 10_000, "none", None),  # fits: the fastest warm lossless codec
        (None, 1_000, "lz4", None),  # does not fit: the fastest cold
        (8_000, 10_000, "zstd", True),  # the smallest lossless one fast enough
        (25_000, 10_000, "none", True),
        (4_200, 1_000, "zstd", True),  # cold: zstd 4,500 >= 4,200, and smaller than lz4
        (6_000, 1_000, "jpeg", True),  # cold: no lossless one is fast enough, jpeg is
        (50_000, 10_000, "none", False),  # nothing is: the fastest, and says so
    ],
)
def test_recommend_rules(target, memory, expected, meets):
    rec = recommend(ROWS, target=target, memory=memory)
    assert (rec.codec, rec.meets_target) == (expected, meets)
    assert f'"{expected}"' in rec.text
    if expected == "jpeg":
        assert "lossy" in rec.text


def test_evict_releases_maps_and_the_feed_goes_on(tmp_path, indexed_set):
    path = di.to_zarr(indexed_set, tmp_path / "e.zarr.zip", chunks=8, codec="none")
    it = di.BatchIterator(path, batch_size=10, arrays=("idx",))
    first = sorted(np.concatenate([b[0] for b in it]).tolist())
    assert evict([path]) == (tmp_path / "e.zarr.zip").stat().st_size
    second = sorted(np.concatenate([b[0] for b in it]).tolist())
    assert first == second == list(range(103))


def test_bench_refuses_a_url_with_what_to_do():
    with pytest.raises(ValueError, match="Copy the store to local disk"):
        compare_codecs("s3://bucket/train.zarr.zip")


def test_compare_codecs_calls_a_float_store_with_nan_lossless(tmp_path):
    # scientific volumes mark missing values with NaN; a lossless copy keeps them
    rng = np.random.default_rng(0)
    pixels = rng.random((16, 4, 4, 1), dtype=np.float32)
    pixels[::3, 0, 0, 0] = np.nan
    ds = di.ImageSet(pixels, np.zeros(16, int), classes=["a"])
    path = di.to_zarr(ds, tmp_path / "f.zarr.zip", chunks=4, order="source")
    rows = compare_codecs(path, samples=16, epochs=1, batch_size=4, codecs=["lz4", "none"])
    exact = np.array_equal(plain_group(path)["images"][...], pixels, equal_nan=True)
    assert exact and [r.psnr for r in rows] == [np.inf, np.inf]
    assert "lossy" not in recommend(rows, target=1.0, memory=2**40).text


def test_recommend_never_calls_a_jpeg_codec_lossless():
    # a JPEG copy can match the measured samples exactly (flat images); it stays lossy
    exact_jpeg = CodecResult("jpeg:100", 12.0, 50_000, 50_000, float("inf"), 80)
    rows = [*ROWS[:3], exact_jpeg]
    keeps_up = [r for r in ROWS[:3] if r.warm >= 6_000]
    rec = recommend(rows, target=6_000, memory=10**6)
    assert rec.codec == min(keeps_up, key=lambda r: r.store_bytes).codec
    assert recommend([exact_jpeg, ROWS[0]], memory=10**6).codec == ROWS[0].codec


# --- size against HDF5 LZF, and goal="size" ----------------------------------------------


@pytest.fixture
def photo_store(tmp_path):
    di.testing.make_photo_folder(tmp_path / "src", n_per_class=20, classes=("chelsea", "coffee"))
    photos = di.from_folder(tmp_path / "src", size=(32, 32))
    return di.to_zarr(photos, tmp_path / "s.zarr.zip", chunks=8)  # 40 samples, 5 chunks


def _h5py_stored_bytes(tmp_path, pixels, chunk_len, **kw):
    """The oracle: the dataset's chunk bytes as h5py reports them for these pixels."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "oracle.h5", "w") as f:
        d = f.create_dataset("images", data=pixels, chunks=(chunk_len, *pixels.shape[1:]), **kw)
        f.flush()
        return d.id.get_storage_size()


@pytest.fixture
def eight_per_chunk(monkeypatch):
    """daskimg's default chunk holds 8 samples of 32x32x3 (instead of ~8 MiB of them)."""
    import daskimg.store.format as fmt

    monkeypatch.setattr(fmt, "CHUNK_BYTES", 8 * 32 * 32 * 3)


@pytest.mark.parametrize(("samples", "measured"), [(24, 24), (20, 16), (5, 5), (999, 40)])
def test_measure_hdf5_is_what_h5py_writes_for_those_samples(
    tmp_path, photo_store, eight_per_chunk, samples, measured
):
    pytest.importorskip("h5py")
    # whole default chunks only (a padded last chunk would bias the projection to the
    # whole store), unless the request covers the store
    assert sample_count(photo_store, samples) == (measured, 40)
    pixels = plain_group(photo_store)["images"][:measured]
    chunk_len = min(8, measured)
    stored = _h5py_stored_bytes(tmp_path, pixels, chunk_len, compression="lzf")
    r = measure_hdf5(photo_store, samples=samples)
    assert (r.compression, r.chunk_len, r.name) == ("lzf", chunk_len, "HDF5 LZF")
    assert r.ratio == pixels.nbytes / stored
    assert r.store_bytes == int(pixels[0].nbytes * 40 / r.ratio) and r.write > 0
    gz = measure_hdf5(photo_store, samples=samples, compression="gzip")
    assert gz.ratio == pixels.nbytes / _h5py_stored_bytes(
        tmp_path, pixels, chunk_len, compression="gzip"
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["oracle.h5", "s.zarr.zip", "src"]  # its copy is removed


def test_compare_codecs_measures_whole_default_chunks(photo_store, eight_per_chunk, monkeypatch):
    import daskimg.store.write as write

    copies = []
    real = write.to_zarr

    def spy(ds, path, **kw):
        copies.append((len(ds), kw["chunks"]))
        return real(ds, path, **kw)

    monkeypatch.setattr(write, "to_zarr", spy)
    # 20 requested -> 16 measured (two whole chunks of 8 samples)
    rows = compare_codecs(photo_store, samples=20, epochs=1, batch_size=8, codecs=["none", "lz4"])
    assert copies == [(16, 8), (16, 8)]
    # no padded chunk: uncompressed, the copy is the pixels plus checksums and metadata
    assert 0.95 < rows[0].ratio < 1


def _lzf(size):
    return Hdf5Result("lzf", 55, 1.0, size, 100.0)


SIZE_ROWS = [
    _row("jpeg:75", 14.0, 30_000, 30_000, lossy=True, size=70),  # smallest, but lossy
    _row("none", 1.0, 30_000, 4_000, size=1000),
    _row("zstd", 1.3, 9_000, 4_500, size=760),
    _row("lz4", 1.1, 20_000, 5_000, size=900),
]


@pytest.mark.parametrize(
    ("target", "memory"),
    [(None, 10**6), (None, 10), (8_000, 10**6), (4_200, 10), (15_000, 10**6), (4_800, 10)],
)
def test_goal_size_picks_the_smallest_lossless_codec_that_keeps_up(target, memory):
    def rate(r):  # the oracle, written out: warm if half the memory holds it, else cold
        return r.warm if r.store_bytes < memory / 2 else r.cold

    lossless = [r for r in SIZE_ROWS if r.psnr == np.inf]
    keeps_up = [r for r in lossless if target is None or rate(r) >= target]
    expected = min(keeps_up, key=lambda r: r.store_bytes)
    rec = recommend(SIZE_ROWS, target=target, memory=memory, goal="size")
    assert (rec.codec, rec.goal, rec.rate) == (expected.codec, "size", rate(expected))
    assert rec.meets_target is (None if target is None else True)
    assert rec.text.startswith(f'codec "{expected.codec}": the smallest lossless codec')
    # the trade is said: its rates against the fastest lossless codec's
    fastest = max(lossless, key=rate)
    if fastest is not expected:
        assert f'against "{fastest.codec}"' in rec.text
        assert f"{fastest.warm:,.0f} warm / {fastest.cold:,.0f} cold" in rec.text
    assert f"{expected.warm:,.0f} warm / {expected.cold:,.0f} cold" in rec.text
    assert 'Lossy "jpeg:75" would be' in rec.text


def test_goal_size_names_a_smaller_codec_that_is_too_slow():
    # cold (does not fit): zstd 4,500/s is smaller but slower than 4,800; lz4 keeps up
    rec = recommend(SIZE_ROWS, target=4_800, memory=10, goal="size", hdf5=_lzf(800))
    assert rec.codec == "lz4"
    assert '"zstd" would be smaller (760 B) but feeds 4,500 samples/s.' in rec.text
    assert "12% larger than HDF5 LZF (800 B)" in rec.text  # lz4's 900 B
    assert "beats HDF5 LZF" not in rec.text  # zstd does, only too slowly


def test_goal_size_when_no_lossless_codec_keeps_up_is_still_the_smallest_and_says_so():
    rec = recommend(SIZE_ROWS, target=50_000, memory=10**6, goal="size")
    assert (rec.codec, rec.meets_target) == ("zstd", False)
    assert "none keeps up with 50,000 samples/s" in rec.text
    # goal speed for the same: the fastest, whatever its size
    assert recommend(SIZE_ROWS, target=50_000, memory=10**6).codec in ("none", "jpeg:75")
    # only lossy codecs measured: the smallest of them, and the text does not call it lossless
    only_lossy = [SIZE_ROWS[0], _row("jpeg:90", 9.0, 8_000, 8_000, lossy=True, size=110)]
    rec = recommend(only_lossy, memory=10**6, goal="size")
    assert rec.codec == "jpeg:75" and "no lossless one was" in rec.text


@pytest.mark.parametrize(
    ("lzf", "says"),
    [
        (850, "11% smaller than HDF5 LZF (850 B)"),  # 760 / 850 = 0.894
        (760, "the same size as HDF5 LZF (760 B)"),
        (700, "9% larger than HDF5 LZF (700 B)"),  # 760 / 700 = 1.086
    ],
)
def test_size_is_compared_with_hdf5_lzf_in_plain_words(lzf, says):
    summary = size_summary(SIZE_ROWS, _lzf(lzf))
    assert summary == f"zstd, 760 B for the whole store, {says} on these samples"
    rec = recommend(SIZE_ROWS, memory=10**6, goal="size", hdf5=_lzf(lzf))
    assert says in rec.text
    beaten = "No lossless codec measured here beats HDF5 LZF" in rec.text
    assert beaten == (lzf <= 760)
    assert size_summary(SIZE_ROWS) == "zstd, 760 B for the whole store"
    assert size_summary(SIZE_ROWS[:1]) == "no lossless codec was measured"


def test_goal_is_checked():
    with pytest.raises(ValueError, match="goal must be one of speed, size"):
        recommend(SIZE_ROWS, goal="smallest")


def test_cli_bench_goal_size_shows_lzf_and_the_real_sample_count(tmp_path, photo_store, capsys):
    pytest.importorskip("h5py")
    argv = ["bench", photo_store, "--epochs", "1", "--batch-size", "8"]
    # --goal implies --codecs
    assert main([*argv, "--goal", "size", "--codec-list", "lz4,zstd,none"]) == 0
    out = capsys.readouterr().out.splitlines()
    # the default --samples (2000) covers this 40-sample store: it says so
    head = next(i for i, line in enumerate(out) if line.startswith("codecs, each re-encoded"))
    assert "the first 40 of the store's 40 samples (all of them)" in out[head]
    table = out[head + 2 : head + 6]
    assert [line.split()[0] for line in table] == ["hdf5-lzf", "lz4", "zstd", "none"]
    assert table[0].endswith("(h5py, 40 samples a chunk: for comparison)")  # ~8 MiB: all
    pixels = plain_group(photo_store)["images"][:]
    lzf = _h5py_stored_bytes(tmp_path, pixels, 40, compression="lzf")  # all 40: the whole store
    assert table[0].split()[1] == f"{pixels.nbytes / lzf:.2f}x"
    ratios = {line.split()[0]: float(line.split()[1][:-1]) for line in table[1:]}
    smallest = max(ratios, key=ratios.get)  # the highest ratio is the smallest store
    summary = next(line for line in out if line.startswith("smallest lossless: "))
    assert summary.startswith(f"smallest lossless: {smallest}, ")
    assert summary.endswith(f" HDF5 LZF ({_human(lzf)}) on these samples")
    assert next(line for line in out if line.startswith("recommended: ")).startswith(
        f'recommended: codec "{smallest}": the smallest lossless codec.'
    )


def test_cli_bench_speed_points_at_goal_size_when_it_differs(photo_store, eight_per_chunk, capsys):
    pytest.importorskip("h5py")
    argv = ["bench", photo_store, "--epochs", "1", "--batch-size", "8", "--samples", "16"]
    assert main([*argv, "--codec-list", "none,zstd"]) == 0
    out = capsys.readouterr().out
    assert "the first 16 of the store's 40 samples (the whole store projected from them)" in out
    rec = next(line for line in out.splitlines() if line.startswith("recommended: "))
    pointer = [line for line in out.splitlines() if line.startswith("for the smallest store")]
    # zstd is smaller than none on photos; goal speed picks the faster one, whichever it is
    assert pointer == ([] if '"zstd"' in rec else ['for the smallest store: --goal size ("zstd")'])


def _human(n):
    from daskimg.store.choose import human_bytes as human

    return human(n)
