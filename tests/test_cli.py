from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import zarr
from conftest import flip_byte_in_chunk, plain_group
from PIL import Image

import daskimg as di
from daskimg.cli import main
from daskimg.store.reader import StoreReader


@pytest.fixture
def ingested(tmp_path, image_folder):
    out = tmp_path / "out"
    assert main(["ingest", str(image_folder), str(out), "--size", "16", "16", "--chunk", "4"]) == 0
    return out


def test_ingest_writes_disjoint_stratified_splits(ingested, image_folder):
    parts = {s: di.open_zarr(ingested / f"{s}.zarr.zip") for s in ("train", "valid", "test")}
    paths = {s: set(p.paths) for s, p in parts.items()}
    assert not (paths["train"] & paths["valid"]) and not (paths["train"] & paths["test"])
    assert not paths["valid"] & paths["test"]
    assert set().union(*paths.values()) == {
        p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png")
    }
    for s, part in parts.items():
        assert part.attrs["split"] == s
        assert part.classes == ("ant", "bee", "cat")
        # 8 images per class: every split holds every class
        assert set(part.labels.tolist()) == {0, 1, 2}


def test_ingest_recognises_split_folders(tmp_path):
    src = tmp_path / "data"
    di.testing.make_image_folder(src, n=12, classes=("a", "b"), split_dirs=("train", "val", "test"))
    out = tmp_path / "out"
    assert main(["ingest", str(src), str(out), "--size", "8", "8", "--format", "dir"]) == 0
    valid = di.open_zarr(out / "valid.zarr")
    assert all(p.startswith("val/") for p in valid.paths)


def test_ingest_exclude_and_arguments_said_for_the_command_line(tmp_path, capsys):
    # the error told to "pass exclude=", which the command line had no way to
    src = tmp_path / "data"
    di.testing.make_image_folder(src / "train", n=6, classes=("a", "b"))
    di.testing.make_image_folder(src / "valid", n=9, classes=("a", "b", "fox"))
    out = tmp_path / "out"
    assert main(["ingest", str(src), str(out), "--size", "8", "8"]) == 2
    err = capsys.readouterr().err
    assert "'fox'" in err and "(on the command line: --exclude DIR)" in err
    assert (
        main(
            [
                "ingest",
                str(src),
                str(out),
                "--size",
                "8",
                "8",
                "--exclude",
                str(src / "valid" / "fox"),
            ]
        )
        == 0
    )
    kept = sorted(plain_group(out / "valid.zarr.zip")["paths"][:].tolist())
    assert kept == sorted(
        p.relative_to(src).as_posix()
        for p in (src / "valid").rglob("*.png")
        if "fox" not in p.parts
    )
    # bench --epochs -1 printed NaN rates and exited 0; --samples 0 blamed the store after
    # the whole warm run; show --seed -1 got numpy's words, naming no argument
    store = str(out / "train.zarr.zip")
    for argv, says in (
        (["bench", store, "--epochs", "-1"], "argument --epochs: a whole number of 0 or more"),
        (
            ["bench", store, "--codecs", "--samples", "0"],
            "argument --samples: a positive whole number",
        ),
        (
            ["show", store, "-o", str(tmp_path / "g.png"), "--seed", "-1"],
            "argument --seed: a whole number of 0",
        ),
    ):
        with pytest.raises(SystemExit) as code:
            main(argv)
        assert code.value.code == 2
        said = capsys.readouterr()
        assert says in said.err and "nan" not in said.out
    # a convert error raised as a KeyError was printed quoted, backslashes and all
    np.savez(tmp_path / "arrays.npz", x=np.zeros((2, 4, 4, 3), np.uint8), y=np.zeros(2, int))
    assert main(["convert", str(tmp_path / "arrays.npz"), str(tmp_path / "c.zarr.zip")]) == 2
    err = capsys.readouterr().err
    assert "has no array 'images'; it has ['x', 'y']" in err and 'error: "' not in err


def test_ingest_skip_reports_bad_files(tmp_path, image_folder, capsys):
    (image_folder / "ant" / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["ingest", str(image_folder), str(out), "--size", "8", "8"]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert (
        main(["ingest", str(image_folder), str(out), "--size", "8", "8", "--on-error", "skip"]) == 0
    )
    printed = capsys.readouterr().out
    assert "skipped" in printed and "ant/bad.png" in printed
    skipped = [
        p
        for s in ("train", "valid", "test")
        for p, _ in di.open_zarr(out / f"{s}.zarr.zip").skipped
    ]
    assert skipped == ["ant/bad.png"]


def test_info_text_and_json(ingested, capsys):
    assert main(["info", str(ingested / "train.zarr.zip")]) == 0
    text = capsys.readouterr().out
    for word in ("format", "version 1", "lz4", "ant", "images", "ratio", "shuffled"):
        assert word in text
    assert main(["info", "--json", str(ingested / "train.zarr.zip")]) == 0
    summary = json.loads(capsys.readouterr().out)
    n = summary["attrs"]["num_samples"]
    assert summary["arrays"]["images"]["shape"] == [n, 16, 16, 3]
    assert sum(summary["class_counts"].values()) == n


def test_verify_names_damaged_chunk(ingested, capsys):
    store = str(ingested / "train.zarr.zip")
    assert main(["verify", store]) == 0
    file, offset, _nbytes = StoreReader(store).chunk_location("images", 1)
    with open(file, "r+b") as fh:
        fh.seek(offset + 10)
        byte = fh.read(1)
        fh.seek(offset + 10)
        fh.write(bytes([byte[0] ^ 1]))
    assert main(["verify", store]) == 1
    out = capsys.readouterr().out
    assert "'images', chunk 1" in out


def test_verify_names_root_metadata_and_store_damage_as_such(tmp_path, capsys):
    ds = di.ImageSet(np.zeros((6, 4, 4, 3), np.uint8), labels=[0, 1] * 3, classes=["a", "b"])
    folder = di.to_zarr(ds, tmp_path / "s.zarr", chunks=2)
    root = tmp_path / "s.zarr" / "zarr.json"
    root.write_text(root.read_text().replace('"classes"', '"classes', 1))  # unparsable
    assert main(["verify", folder]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED the store's root metadata (zarr.json): " in out and "chunk -1" not in out
    (tmp_path / "cut.zarr.zip").write_bytes(b"PK" + bytes(30))
    assert main(["verify", str(tmp_path / "cut.zarr.zip")]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED the store: " in out and "chunk -1" not in out


def test_verify_checks_every_store_of_a_folder_as_info_lists_them(tmp_path, capsys):
    # verify OUT/ said "must end in .zarr.zip or .zarr" where info OUT/ listed every store;
    # a mistyped folder was told the same
    ds = di.ImageSet(np.arange(6 * 48, dtype=np.uint8).reshape(6, 4, 4, 3))
    out = tmp_path / "out"
    train = di.to_zarr(ds, out / "train.zarr.zip", chunks=2, codec="none")
    di.to_zarr(ds, out / "valid.zarr", chunks=2)
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.count("every chunk present and matching its checksum") == 2
    flip_byte_in_chunk(train, "images", 1)
    assert main(["verify", str(out)]) == 1
    got = capsys.readouterr()
    assert f"DAMAGED array 'images', chunk 1: {train}: " in got.out  # the store named once
    assert "valid.zarr: every chunk present" in got.out
    for command in ("verify", "info"):
        assert main([command, str(tmp_path / "typo")]) == 2
        assert "typo: no such store or folder of stores" in capsys.readouterr().err
    # a store of another tool beside them: said and skipped, the others still checked
    zarr.open_group(str(out / "aa.zarr"), mode="w", zarr_format=2).create_array(
        "x", shape=(2,), dtype="i4"
    )
    for command, rc in (("verify", 2), ("info", 2)):
        assert main([command, str(out)]) == rc
        got = capsys.readouterr()
        assert "aa.zarr: skipped: " in got.err and "is a Zarr v2 store" in got.err
        assert "valid.zarr" in got.out


def test_verify_says_what_it_cannot_check_in_a_store_without_a_chunk_table(
    ingested, tmp_path, capsys
):
    # a store written before the chunk tables: a shard copied over another passed verify
    # with "every chunk present and matching its checksum" and nothing more
    import json

    folder = tmp_path / "old.zarr"
    di.to_zarr(di.open_zarr(ingested / "train.zarr.zip"), folder, chunks=4)
    assert main(["verify", str(folder)]) == 0
    assert "note:" not in capsys.readouterr().out
    meta = json.loads((folder / "zarr.json").read_text())
    for key in ("arrays", "attrs_crc32c"):
        del meta["attributes"]["daskimg"][key]
    (folder / "zarr.json").write_text(json.dumps(meta))
    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "note: written before 2026-12, the store has no table" in out


def test_verify_names_arrays_without_a_chunk_table_after_an_append(tmp_path, capsys):
    # a store from before the tables, given a column with ArrayWriter(mode="a"): republished
    # with root checksums and the new column's table, verify said nothing of the old arrays,
    # whose shards could be swapped unnoticed
    golden = os.path.join(os.path.dirname(__file__), "golden", "v1", "lz4.zarr.zip")
    store = tmp_path / "old.zarr.zip"
    shutil.copy(golden, store)
    old = sorted(plain_group(golden).array_keys())
    n = len(di.open_zarr(store))
    with di.ArrayWriter(store, name="pred", shape=(), dtype="float32", mode="a") as w:
        w.append(np.arange(n, dtype="float32"), index=np.arange(n))
    assert main(["verify", str(store)]) == 0
    out = capsys.readouterr().out
    said = ", ".join(repr(a) for a in old)
    assert f"note: the arrays {said} were written before 2026-12 and have no table" in out
    assert "'pred'" not in out.split("note:")[1]


def test_show_draws_the_samples_with_their_labels(ingested, tmp_path):
    store = ingested / "train.zarr.zip"
    png = tmp_path / "grid.png"
    assert main(["show", str(store), "-o", str(png), "--n", "6"]) == 0
    picture = np.asarray(Image.open(png).convert("RGB"))
    assert picture.shape[0] > 100 and picture.std() > 10  # a real picture, not a blank canvas
    # the figure shows the stored pixels under their class names
    from daskimg.show import grid_figure

    ds = di.open_zarr(store)
    fig = grid_figure(ds, n=6, seed=0)
    idx = np.sort(np.random.default_rng(0).choice(len(ds), size=6, replace=False))
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6
    for ax, i in zip(shown, idx, strict=True):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), ds.images[i].compute())
        assert ax.get_title() == ds.classes[ds.labels[i]]


def test_bench_runs_and_compares_with_the_limit(ingested, capsys):
    assert (
        main(["bench", str(ingested / "train.zarr.zip"), "--batch-size", "4", "--target", "1"]) == 0
    )
    out = capsys.readouterr().out
    assert "of the limit" in out and "keeps up" in out


def test_bench_cold_and_codecs_recommends_one(ingested, capsys):
    store = str(ingested / "train.zarr.zip")
    argv = ["bench", store, "--batch-size", "4", "--epochs", "1", "--cold", "--codecs"]
    assert main([*argv, "--samples", "12", "--target", "1"]) == 0
    out = capsys.readouterr().out
    assert "[warm: page cache]" in out and "[cold: from disk]" in out
    rows = [line.split()[0] for line in out.splitlines() if line.strip().endswith("GiB")]
    assert rows == ["lz4", "zstd", "none", "jpeg:90", "jpeg:75"]
    # every codec keeps up with 1 img/s: the smallest lossless one is recommended
    assert 'recommended: codec "zstd"' in out
    assert main([*argv, "--samples", "12", "--target", "1e12"]) == 1
    assert "none keeps up" in capsys.readouterr().out
    # a chosen list
    assert main([*argv[:-2], "--codec-list", "none,jpeg:50", "--samples", "12"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if line.strip().endswith("GiB")] == [
        "none",
        "jpeg:50",
    ]


def test_python_dash_m_and_errors(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "daskimg", "info", str(tmp_path / "missing.zarr.zip")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "missing.zarr.zip" in run.stderr


def test_unreachable_scheduler_is_named(tmp_path, image_folder, capsys):
    # port 9 on loopback: nothing listens there
    status = main(
        [
            "ingest",
            str(image_folder),
            str(tmp_path / "o"),
            "--size",
            "8",
            "8",
            "--scheduler",
            "127.0.0.1:9",
        ]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert "tcp://127.0.0.1:9" in err and "--scheduler auto" in err


def _server(greeting: bytes | None):
    """A TCP server on loopback that accepts and then says ``greeting`` (None: nothing, ever)."""
    import socket
    import threading

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)
            if greeting is not None:
                conn.sendall(greeting)

    threading.Thread(target=serve, daemon=True).start()
    return sock


@pytest.mark.parametrize(
    ("greeting", "says"),
    [
        (None, "did not answer as a dask scheduler"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "another protocol"),
    ],
    ids=["silent", "ssh"],
)
def test_a_scheduler_address_of_another_server_fails_fast_and_clearly(
    tmp_path, image_folder, capsys, monkeypatch, greeting, says
):
    # something listens at HOST:PORT but is no dask scheduler: a silent one (an HTTP server,
    # the dashboard's port) hung the ingest for good; one that speaks first (SSH) had its
    # greeting read as a message length, a MemoryError traceback (exit 1)
    cli_ingest = importlib.import_module("daskimg.cli.ingest")

    monkeypatch.setattr(cli_ingest, "CONNECT_WAIT", 8.0)
    sock = _server(greeting)
    port = sock.getsockname()[1]
    try:
        argv = ["ingest", str(image_folder), str(tmp_path / "o"), "--size", "8", "8"]
        status = main([*argv, "--scheduler", f"127.0.0.1:{port}"])
    finally:
        sock.close()
    assert status == 2
    err = capsys.readouterr().err
    assert f"tcp://127.0.0.1:{port}" in err and says in err and "Traceback" not in err
    assert not (tmp_path / "o" / "train.zarr.zip").exists()


def test_a_scheduler_without_workers_is_said_and_waited_for_a_bounded_time(
    tmp_path, image_folder, capsys, monkeypatch
):
    # a scheduler whose workers are still queued (or dead): the ingest waited for ever,
    # with no word
    from distributed import LocalCluster

    cli_ingest = importlib.import_module("daskimg.cli.ingest")

    monkeypatch.setattr(cli_ingest, "WORKER_WAIT", 3.0)
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        argv = ["ingest", str(image_folder), str(tmp_path / "o"), "--size", "8", "8"]
        status = main([*argv, "--scheduler", cluster.scheduler_address])
    assert status == 2
    captured = capsys.readouterr()
    assert "has no workers yet; waiting" in captured.out
    assert "no worker joined the dask scheduler" in captured.err


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--scheduler", "thread"], "did you mean 'threads'"),
        (["--seed", "-1"], "--seed -1"),
        (["--valid", "1.5"], "--valid 1.5 is not a fraction"),
    ],
)
def test_wrong_arguments_are_refused_before_src_is_listed(tmp_path, capsys, extra, says):
    # said only after SRC was listed (long, with its warnings); --seed -1 after "writing
    # train.zarr.zip"; "thread" as "missing port number in address 'thread'". SRC missing
    # here: the argument is what is named
    status = main(
        ["ingest", str(tmp_path / "no-src"), str(tmp_path / "o"), "--size", "8", "8", *extra]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert says in err and "no-src" not in err


def test_valid_and_test_that_leave_nothing_to_train_on_are_refused(tmp_path, image_folder, capsys):
    out = tmp_path / "o"
    status = main(["ingest", str(image_folder), str(out), "--size", "8", "8", "--valid", "0.5",
                   "--test", "0.5"])  # fmt: skip
    assert status == 2
    assert "must leave something to train on" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("codec", ["jpeg:xx", "lz5", "jpeg:0"])
def test_a_bad_codec_is_refused_before_any_image_is_read(tmp_path, image_folder, capsys, codec):
    out = tmp_path / "out"
    argv = ["ingest", str(image_folder), str(out), "--size", "16", "16", "--codec", codec]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr()
    assert "--codec" in err.err and "found" not in err.out
    assert not out.exists()


def test_ingest_no_draft_is_pillows_full_decode_and_channels_are_for_images(tmp_path, capsys):
    # the command line had no way to the exact decode (draft=False), and --channels 3 with
    # a volume size was dropped without a word
    import skimage.data

    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    photo = Image.fromarray(skimage.data.astronaut()).resize((256, 256))
    photo.save(src / "cat" / "a.jpg", quality=90)  # 8x the target: drafted at 1/8
    size = ["--size", "32", "32", "--valid", "0", "--test", "0"]
    want = np.asarray(  # oracle: Pillow's full decode and resize
        Image.open(src / "cat" / "a.jpg").convert("RGB").resize((32, 32), Image.BILINEAR)
    )
    assert main(["ingest", str(src), str(tmp_path / "exact"), *size, "--no-draft"]) == 0
    got = di.open_zarr(tmp_path / "exact" / "train.zarr.zip").images.compute()[0]
    np.testing.assert_array_equal(got, want)
    assert main(["ingest", str(src), str(tmp_path / "drafted"), *size]) == 0
    drafted = di.open_zarr(tmp_path / "drafted" / "train.zarr.zip").images.compute()[0]
    assert 0 < np.abs(drafted.astype(int) - want).mean() < 5.5  # libjpeg's 1/8 scale
    capsys.readouterr()
    vol = ["--size", "2", "4", "4", "--channels", "3"]
    assert main(["ingest", str(src), str(tmp_path / "v"), *vol]) == 2
    assert "--channels 3 is for images; a 3-D --size reads volumes" in capsys.readouterr().err


def test_ingest_with_a_jpeg_quality(tmp_path, image_folder):
    out = tmp_path / "out"
    argv = ["ingest", str(image_folder), str(out), "--size", "16", "16", "--codec", "jpeg:60"]
    assert main(argv) == 0
    z = plain_group(out / "train.zarr.zip")["images"]
    codecs = z.metadata.to_dict()["codecs"]
    inner = (
        codecs[0]["configuration"]["codecs"] if codecs[0]["name"] == "sharding_indexed" else codecs
    )
    assert inner[0] == {"name": "daskimg.jpeg", "configuration": {"quality": 60}}


@pytest.mark.parametrize("codecs", ["lz4,jpeg:0", "lz5", "jpeg:²"])
def test_bench_codecs_list_is_checked_before_any_measurement(ingested, capsys, codecs):
    from daskimg.store.codecs import parse_codec

    bad = [c for c in codecs.split(",") if c != "lz4"]
    for c in bad:  # the oracle: the library refuses each
        with pytest.raises(ValueError, match="codec"):
            parse_codec(c)
    store = str(ingested / "train.zarr.zip")
    with pytest.raises(SystemExit) as exc:
        main(["bench", store, "--epochs", "1", "--codec-list", codecs])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert "--codec-list" in captured.err and bad[0] in captured.err
    assert "samples/s" not in captured.out  # no benchmark ran first


def test_bench_codecs_is_a_flag_before_or_after_the_store(ingested, capsys):
    store = str(ingested / "train.zarr.zip")
    args = ["--batch-size", "4", "--epochs", "1", "--samples", "12", "--codecs"]
    for argv in (["bench", store, *args], ["bench", *args, store]):
        assert main(argv) == 0
        rows = [
            line.split()[0]
            for line in capsys.readouterr().out.splitlines()
            if line.strip().endswith("GiB")
        ]
        assert rows == ["lz4", "zstd", "none", "jpeg:90", "jpeg:75"]


def test_a_rerun_keeps_a_finished_split_only_if_its_files_are_unchanged(
    tmp_path, image_folder, capsys
):
    out = tmp_path / "out"
    args = ["ingest", str(image_folder), str(out), "--size", "8", "8"]
    assert main(args) == 0
    kept = {s: (out / f"{s}.zarr.zip").stat().st_mtime_ns for s in ("train", "valid", "test")}
    capsys.readouterr()
    assert main(args) == 0  # nothing changed: every split is kept as it is
    assert kept == {s: (out / f"{s}.zarr.zip").stat().st_mtime_ns for s in kept}
    # kept unread: said so, with how to check it and how to write it anew (a damaged store
    # was kept as 'complete', and verify's advice to re-create it led back here)
    assert capsys.readouterr().out.count("not read again: daskimg verify checks every chunk") == 3
    # a file's content replaced under the same name: the stores hold its old pixels
    victim = sorted(image_folder.rglob("*.png"))[0]
    Image.new("RGB", Image.open(victim).size, (255, 0, 0)).save(victim)
    capsys.readouterr()
    assert main(args) == 2
    assert "train.zarr.zip exists and was written from other files" in capsys.readouterr().err
    # ... and asking to skip bad files is another ingest too
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()
    assert main([*args, "--on-error", "skip"]) == 2
    assert "written from other files or settings" in capsys.readouterr().err
    assert main([*args, "--on-error", "skip", "--overwrite"]) == 0
    stored = {
        p: img
        for s in kept
        for p, img in zip(
            di.open_zarr(out / f"{s}.zarr.zip").paths,
            di.open_zarr(out / f"{s}.zarr.zip").images.compute(),
            strict=True,
        )
    }
    red = stored[victim.relative_to(image_folder).as_posix()]
    assert (red[..., 0] == 255).all() and (red[..., 1:] == 0).all()
    # rewritten with the same size and modification time (cp -p, rsync -a, touch -r): it
    # was kept as 'written from the same files', holding the red pixels
    size = Image.open(victim).size
    Image.new("RGB", size, (0, 255, 0)).save(victim, format="BMP")  # BMPs of a size: one length
    assert main([*args, "--on-error", "skip", "--overwrite"]) == 0
    before = victim.stat()
    Image.new("RGB", size, (0, 0, 255)).save(victim, format="BMP")
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert victim.stat().st_size == before.st_size
    capsys.readouterr()
    assert main([*args, "--on-error", "skip"]) == 2
    assert "written from other files or settings" in capsys.readouterr().err


def test_a_refused_re_ingest_says_what_changed(tmp_path, capsys):
    # "written from other files or settings" named nothing: the user had to guess that a
    # class folder had been added
    src, out = tmp_path / "src", tmp_path / "out"
    for c in ("b", "c"):
        (src / c).mkdir(parents=True)
        for k in range(5):
            Image.new("RGB", (9, 7), (k, 0, 0)).save(src / c / f"{k}.png")
    args = ["ingest", str(src), str(out), "--size", "4", "4", "--valid", "0", "--test", "0"]
    assert main(args) == 0
    (src / "a").mkdir()
    Image.new("RGB", (9, 7)).save(src / "a" / "0.png")
    capsys.readouterr()
    assert main(args) == 2
    assert "(classes added ['a']; files added here: ['a/0.png'])" in capsys.readouterr().err
    (src / "a" / "0.png").unlink()
    (src / "a").rmdir()
    assert main([*args[:4], "6", "6", *args[6:], "--seed", "3"]) == 2
    assert "(size [4, 4] then, [6, 6] now; seed 0 then, 3 now)" in capsys.readouterr().err
    Image.new("RGB", (9, 7), (9, 9, 9)).save(src / "b" / "0.png")  # new pixels, same name
    assert main(args) == 2
    assert "the files themselves" in capsys.readouterr().err
    # a file more in a split of 3 that leaves this split's count as it was: it said "the
    # same number of files"; the oracle: the paths stored and the folder's files
    shutil.rmtree(out)
    split = [*args[:6], "--valid", "0.1", "--test", "0.1"]
    for k in range(5, 12):
        Image.new("RGB", (9, 7), (k, 1, 0)).save(src / "b" / f"{k}.png")
    assert main(split) == 0
    Image.new("RGB", (9, 7), (1, 2, 3)).save(src / "c" / "new.png")
    stored = {
        p for s in ("train", "valid", "test") for p in di.open_zarr(out / f"{s}.zarr.zip").paths
    }
    assert "c/new.png" not in stored
    capsys.readouterr()
    assert main(split) == 2
    err = capsys.readouterr().err
    assert "files added here: [" in err and "c/new.png" in err and "number of files" not in err
    # other fractions, every file still there: the files this split no longer holds were
    # said to be "gone", and users went looking for files they had
    (src / "c" / "new.png").unlink()
    held = set(di.open_zarr(out / "valid.zarr.zip").paths)
    assert main([*args[:6], "--valid", "0.3", "--test", "0.1"]) == 2
    err = capsys.readouterr().err
    assert (
        "still in SRC but no longer in this split (the split of SRC changed: other --valid/--test"
        in err
    )
    assert "files gone" not in err
    assert all((src / p).is_file() for p in held)  # the oracle: the files are all there
    # a file really gone is said so (one split: no file moves to another)
    shutil.rmtree(out)
    assert main(args) == 0
    (src / "b" / "6.png").unlink()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "files gone: ['b/6.png']" in err and "still in SRC" not in err


def test_stores_of_an_earlier_run_that_this_run_does_not_write_are_not_left_beside_it(
    tmp_path, image_folder, capsys
):
    """A re-run with --valid 0 --test 0 (or --format dir) left the earlier valid/test stores
    in OUT, holding images the new train store holds too; `daskimg info OUT/*` listed all."""
    out = tmp_path / "out"
    args = ["ingest", str(image_folder), str(out), "--size", "8", "8"]
    assert main(args) == 0
    old = {s: set(di.open_zarr(out / f"{s}.zarr.zip").paths) for s in ("valid", "test")}
    capsys.readouterr()
    again = [*args, "--valid", "0", "--test", "0"]
    assert main(again) == 2  # refused before any work: OUT is left as the first run made it
    err = capsys.readouterr().err
    assert "valid.zarr.zip" in err and "test.zarr.zip" in err and "--overwrite" in err
    assert {s: set(di.open_zarr(out / f"{s}.zarr.zip").paths) for s in old} == old
    assert main([*again, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train.zarr.zip"]
    train = set(di.open_zarr(out / "train.zarr.zip").paths)
    assert train == {p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png")}
    # the other format: a folder store beside the zip of the same split is stale too
    assert main([*again, "--format", "dir", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train.zarr"]


def test_out_named_like_a_class_folder_of_src_does_not_drop_that_class(tmp_path, monkeypatch):
    # `daskimg ingest photos stores` with a class folder photos/stores: OUT was taken
    # relative to SRC, and the class 'stores' silently left out
    src = tmp_path / "photos"
    files = di.testing.make_image_folder(src, n=9, size=(8, 8), classes=("cat", "dog", "stores"))
    monkeypatch.chdir(tmp_path)
    assert (
        main(["ingest", "photos", "stores", "--size", "8", "8", "--valid", "0", "--test", "0"]) == 0
    )
    train = di.open_zarr(tmp_path / "stores" / "train.zarr.zip")
    assert train.classes == ("cat", "dog", "stores")
    assert sorted(train.paths) == sorted(f.relative_to(src).as_posix() for f in files)


@pytest.mark.parametrize("out", ["file", "file/below", "link"])
def test_out_that_is_a_file_is_refused_before_decoding(tmp_path, monkeypatch, capsys, out):
    # a file where the OUT folder goes failed after the listing with `[Errno 17] File exists`
    di.testing.make_image_folder(tmp_path / "photos", n=4, size=(8, 8))
    (tmp_path / "file").write_bytes(b"notes")
    (tmp_path / "link").symlink_to("gone")
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "photos", out, "--size", "8", "8"]) == 2
    err = capsys.readouterr()
    assert "found" not in err.out  # refused before the folder is read
    if out == "link":
        assert "OUT is a link to 'gone', which does not exist" in err.err
    else:
        assert "is a file, not a folder" in err.err
        assert ("OUT's parent" in err.err) == (out == "file/below")
    assert (tmp_path / "file").read_bytes() == b"notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link", "photos"]


def test_a_file_name_that_is_not_utf8_is_refused_before_any_split_is_written(
    tmp_path, monkeypatch, capsys
):
    # a Latin-1 name in test/: train was decoded and written, then the run failed on test
    di.testing.make_image_folder(
        tmp_path / "photos", n=4, size=(8, 8), split_dirs=("train", "test")
    )
    cat = os.fsencode(tmp_path / "photos" / "test" / "cat")
    os.rename(os.path.join(cat, b"cat_0000.png"), os.path.join(cat, b"caf\xe9.png"))
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "photos", "out", "--size", "8", "8"]) == 2
    err = capsys.readouterr()
    assert "writing" not in err.out
    assert "'test/cat/caf\\udce9.png' is not valid Unicode text" in err.err
    assert not (tmp_path / "out").exists()


def test_info_counts_unlabelled_samples_and_unnamed_classes(tmp_path, capsys):
    # oracle: the labels given, counted with numpy
    images = np.zeros((9, 4, 4, 3), np.uint8)
    labels = np.array([0, 1, -1, 0, -1, 1, 1, -1, 0])
    named = di.to_zarr(di.ImageSet(images, labels, classes=["cat", "dog"]), tmp_path / "a.zarr.zip")
    assert main(["info", "--json", str(named)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["class_counts"] == {"cat": 3, "dog": 3}
    assert summary["unlabelled"] == int((labels == -1).sum())
    assert main(["info", str(named)]) == 0
    assert "(no label: -1)       3" in capsys.readouterr().out
    bare = di.to_zarr(
        di.ImageSet(images, np.array([5, 5, 7, 0, 5, 7, 7, 7, 0])), tmp_path / "b.zarr"
    )
    assert main(["info", "--json", str(bare)]) == 0
    assert json.loads(capsys.readouterr().out)["class_counts"] == {"0": 2, "5": 3, "7": 4}


def test_info_counts_every_class_of_a_large_label_set(tmp_path, capsys):
    # unnamed indices were cut at 1,000 without a word; named classes were counted one
    # pass over the labels per class (hours for 10,000 classes of a million samples)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1500, 4000)
    images = np.zeros((len(labels), 2, 2, 1), np.uint8)
    bare = di.to_zarr(di.ImageSet(images, labels), tmp_path / "b.zarr.zip")
    values, n = np.unique(labels, return_counts=True)  # the oracle: numpy
    assert main(["info", "--json", str(bare)]) == 0
    counts = json.loads(capsys.readouterr().out)["class_counts"]
    assert counts == {str(v): int(k) for v, k in zip(values, n, strict=True)}
    assert len(counts) > 1000
    classes = [f"c{i}" for i in range(1600)]  # 1,600 classes, some without samples
    named = di.to_zarr(di.ImageSet(images, labels, classes=classes), tmp_path / "n.zarr.zip")
    assert main(["info", "--json", str(named)]) == 0
    counts = json.loads(capsys.readouterr().out)["class_counts"]
    assert list(counts) == classes
    assert counts == {c: int((labels == i).sum()) for i, c in enumerate(classes)}
    assert main(["info", str(named)]) == 0
    assert "... and 1500 more" in capsys.readouterr().out


@pytest.mark.parametrize("codec", ["jpeg", "jpeg:90", "zstd"])
def test_a_rerun_with_a_codec_keeps_its_finished_splits(tmp_path, image_folder, codec):
    out = tmp_path / "out"
    args = ["ingest", str(image_folder), str(out), "--size", "16", "16", "--codec", codec]
    assert main(args) == 0
    kept = {s: (out / f"{s}.zarr.zip").stat().st_mtime_ns for s in ("train", "valid", "test")}
    assert main(args) == 0  # refused its own stores once "jpeg" was recorded as "jpeg:90"
    assert kept == {s: (out / f"{s}.zarr.zip").stat().st_mtime_ns for s in kept}
    assert di.open_zarr(out / "train.zarr.zip").attrs["codec"] == (
        "zstd" if codec == "zstd" else "jpeg:90"
    )


def test_a_rerun_after_a_mask_file_changed_writes_the_new_mask(tmp_path, capsys):
    # the fingerprint counted the images' files only: the store with the old mask was kept
    # as 'written from the same files'
    import zarr
    from PIL import Image

    src, masks, out = tmp_path / "src", tmp_path / "masks", tmp_path / "out"
    di.testing.make_image_folder(src, n=6, size=(8, 8), classes=("cat", "dog"))
    for f in src.rglob("*.png"):
        (masks / f.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 1, np.uint8)).save(masks / f.parent.name / f.name)
    args = ["ingest", str(src), str(out), "--size", "8", "8", "--masks", str(masks)]
    args += ["--valid", "0", "--test", "0"]
    assert main(args) == 0
    victim = sorted(masks.rglob("*.png"))[0]
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(victim)
    capsys.readouterr()
    assert main(args) == 2  # another source now: refused unless told to overwrite
    assert "written from other files or settings" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    g = zarr.open_group(zarr.storage.ZipStore(out / "train.zarr.zip", mode="r"), mode="r")
    stored = dict(zip(g["paths"][:].tolist(), g["masks"][:], strict=True))
    key = victim.relative_to(masks).as_posix()
    np.testing.assert_array_equal(stored[key], np.asarray(Image.open(victim)))  # oracle: Pillow


@pytest.mark.parametrize("into", ["cat", "test", "."])
def test_ingest_into_a_class_or_split_folder_of_its_source_is_refused(tmp_path, into, capsys):
    # OUT inside SRC is left out of the set: `ingest src src/cat` wrote a one-class set
    # without cat, and `ingest src src/test` dropped the test split, both with exit 0
    src = tmp_path / "src"
    if into == "test":
        di.testing.make_image_folder(src, n=8, size=(8, 8), split_dirs=("train", "test"))
    else:
        di.testing.make_image_folder(src, n=8, size=(8, 8), classes=("cat", "dog"))
    out = src / into
    walked = list(out.rglob("*.png"))  # the oracle: the images the folder holds
    assert walked
    assert main(["ingest", str(src), str(out), "--size", "8", "8"]) == 2
    assert "holds images" in capsys.readouterr().err
    assert not list(out.glob("*.zarr*"))
    # a folder of stores inside SRC stays allowed (and left out on the next run), also once
    # a picture is saved beside the stores (daskimg show -o stores/grid.png)
    stores = ["ingest", str(src), str(src / "stores"), "--size", "8", "8"]
    assert main(stores) == 0
    shutil.copy(walked[0], src / "stores" / "grid.png")
    assert main(stores) == 0
    # a stray store file inside a class folder does not make it an earlier run's OUT
    if into == "cat":
        shutil.copy(src / "stores" / "train.zarr.zip", out / "old.zarr.zip")
        assert main(["ingest", str(src), str(out), "--size", "8", "8"]) == 2


def test_a_failed_overwrite_never_leaves_two_runs_side_by_side(tmp_path, capsys):
    # the new train store was published beside the earlier run's valid store, which held
    # an image the new train holds too; `daskimg info` passed both
    import zarr

    src, out = tmp_path / "src", tmp_path / "out"
    di.testing.make_image_folder(src, n=12, size=(8, 8), split_dirs=("train", "valid"))
    args = ["ingest", str(src), str(out), "--size", "8", "8"]
    assert main(args) == 0
    moved = sorted((src / "valid").rglob("*.png"))[0]
    moved.rename(src / "train" / moved.parent.name / ("was_valid_" + moved.name))
    (src / "valid" / moved.parent.name / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    stores = sorted(p.name for p in out.iterdir() if p.name.endswith(".zarr.zip"))

    def paths(name):
        g = zarr.open_group(zarr.storage.ZipStore(out / name, mode="r"), mode="r")
        return {str(p).rsplit("/", 1)[-1].removeprefix("was_valid_") for p in g["paths"][:]}

    named = [paths(s) for s in stores]  # the oracle: plain zarr
    assert len(named) == 1 or not set.intersection(*named)  # no image in two runs' stores
    assert stores == ["train.zarr.zip"]  # this run's train; the earlier valid is gone
    assert "removed" in capsys.readouterr().out


def _split_paths(out):
    """Each store's paths under OUT, read with plain zarr (the oracle)."""
    return {
        p.name: set(plain_group(p)["paths"][:].tolist()) for p in sorted(out.glob("*.zarr.zip"))
    }


def test_a_refused_rerun_writes_no_split_beside_the_earlier_run(tmp_path, capsys):
    # train removed (to redo it), then a re-run with another seed: train was written anew,
    # then valid refused as 'written from other files': a new train beside the old valid,
    # 4 of 6 valid images in both
    src, out = tmp_path / "src", tmp_path / "out"
    di.testing.make_image_folder(src, n=30, size=(8, 8))
    args = ["ingest", str(src), str(out), "--size", "8", "8", "--valid", "0.2", "--test", "0.2"]
    assert main([*args, "--seed", "1"]) == 0
    (out / "train.zarr.zip").unlink()
    before = _split_paths(out)
    capsys.readouterr()
    assert main([*args, "--seed", "0"]) == 2
    captured = capsys.readouterr()
    assert "writing" not in captured.out
    assert "written from other files or settings" in captured.err
    assert _split_paths(out) == before  # OUT as the earlier run left it


def test_an_overwrite_killed_as_its_first_store_is_published_leaves_one_run(
    tmp_path, monkeypatch, capsys
):
    # the earlier run's valid and test were removed after the new train was published: a
    # kill in between (8-12 ms) left the new train beside the old valid and test
    from daskimg.store.location import Location

    src, out = tmp_path / "src", tmp_path / "out"
    di.testing.make_image_folder(src, n=30, size=(8, 8))
    args = ["ingest", str(src), str(out), "--size", "8", "8", "--valid", "0.2", "--test", "0.2"]
    assert main([*args, "--seed", "1"]) == 0
    publish = Location.publish_file

    class Killed(BaseException):
        pass

    def killed_after(self, staging):
        publish(self, staging)
        raise Killed  # the process gone right after the rename

    monkeypatch.setattr(Location, "publish_file", killed_after)
    with pytest.raises(Killed):
        main([*args, "--seed", "0", "--overwrite"])
    named = _split_paths(out)
    assert list(named) == ["train.zarr.zip"]  # the new train alone, never beside the old
    # (review) the publish itself failing (a full disk): the removed stores are said
    monkeypatch.setattr(Location, "publish_file", publish)
    assert main([*args, "--seed", "1", "--overwrite"]) == 0

    def full_disk(self, staging):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Location, "publish_file", full_disk)
    capsys.readouterr()
    assert main([*args, "--seed", "0", "--overwrite"]) == 2
    assert list(_split_paths(out)) == ["train.zarr.zip"]  # the earlier train, alone
    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert "the earlier run's" in err and "valid.zarr.zip" in err and "were removed" in err


@pytest.mark.parametrize("flag", ["--valid", "--test"])
def test_a_split_fraction_that_is_no_number_is_named(tmp_path, image_folder, capsys, flag):
    # --valid nan was dropped as 'not > 0' and the error named only the other fraction
    out = tmp_path / "out"
    assert main(["ingest", str(image_folder), str(out), "--size", "8", "8", flag, "nan"]) == 2
    assert f"{flag} nan is not a fraction" in capsys.readouterr().err
    assert not out.exists()


def test_ingest_no_stratify_divides_the_whole_set_by_the_fractions(tmp_path, caplog):
    # stratified, each of 20 classes of 3 gives every split one sample: 0.9/0.05/0.05 came
    # out a third each; the warning pointed to an option the command line did not have
    import logging

    src = tmp_path / "src"
    di.testing.make_image_folder(src, n=60, size=(8, 8), classes=[f"c{i:02d}" for i in range(20)])
    args = ["ingest", str(src), "", "--size", "8", "8", "--valid", "0.05", "--test", "0.05"]
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert main([*args[:2], str(tmp_path / "a"), *args[3:]]) == 0
    assert "--no-stratify" in caplog.text
    counts = {s: len(di.open_zarr(tmp_path / "a" / f"{s}.zarr.zip")) for s in ("train", "valid")}
    assert counts == {"train": 20, "valid": 20}  # the oracle: one per class each
    assert main([*args[:2], str(tmp_path / "b"), *args[3:], "--no-stratify"]) == 0
    counts = {
        s: len(di.open_zarr(tmp_path / "b" / f"{s}.zarr.zip")) for s in ("train", "valid", "test")
    }
    assert counts == {"train": 54, "valid": 3, "test": 3}  # 0.9, 0.05, 0.05 of 60


class _ClosedPipe:
    """Standard output whose reader has gone (``daskimg ... | head -1``)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_pipe_neither_stops_an_overwrite_nor_fails_a_verify(tmp_path, monkeypatch):
    # `ingest ... --overwrite | head -2` stopped at its first report, after removing one of
    # the earlier run's stores: the new train stayed beside the old test (121 of 150 test
    # images in train); `verify good | head -0` exited 2
    import zarr

    src, out = tmp_path / "src", tmp_path / "out"
    di.testing.make_image_folder(src, n=12, size=(8, 8), split_dirs=("train", "valid", "test"))
    args = ["ingest", str(src), str(out), "--size", "8", "8"]
    assert main(args) == 0
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    for name in ("train", "valid", "test"):  # the oracle: plain zarr's attributes
        g = zarr.open_group(zarr.storage.ZipStore(out / f"{name}.zarr.zip", mode="r"), mode="r")
        assert g.attrs["daskimg"]["seed"] == 1, name
    assert main(["verify", str(out / "train.zarr.zip")]) == 0


def test_a_class_folder_with_a_file_named_like_a_store_stays_a_class(tmp_path, capsys):
    # an empty notes.zarr.zip in a class folder made ingest leave the whole class out (exit
    # 0, every later label shifted), said as "an earlier ingest's OUT"; a real store put
    # into a class folder beside its images is refused, naming the folder
    src, out = tmp_path / "src", tmp_path / "out"
    di.testing.make_image_folder(src, n=12, size=(8, 8), classes=("cat", "dog", "eel"))
    (src / "cat" / "notes.zarr.zip").write_bytes(b"")
    args = ["ingest", str(src), str(out), "--size", "8", "8", "--valid", "0", "--test", "0"]
    assert main(args) == 0
    walked = sorted(  # the oracle: os.walk's images
        os.path.relpath(os.path.join(d, f), src)
        for d, _, files in os.walk(src)
        for f in files
        if f.endswith(".png")
    )
    stored = di.open_zarr(out / "train.zarr.zip")
    assert stored.classes == ("cat", "dog", "eel")
    assert sorted(stored.paths) == walked
    shutil.copy(out / "train.zarr.zip", src / "cat" / "mine.zarr.zip")  # a real store
    capsys.readouterr()
    assert main([*args[:2], str(tmp_path / "out2"), *args[3:]]) == 2
    assert "cat holds daskimg stores (mine.zarr.zip) and 4 image" in capsys.readouterr().err


def test_an_earlier_out_inside_src_is_no_class_of_the_next_run(tmp_path, caplog):
    # ingest SRC SRC/v1, then ingest SRC SRC/v2: v1 (stores only) was an empty class, every
    # label index after it shifted by one
    import logging

    src = tmp_path / "src"
    di.testing.make_image_folder(src, n=12, size=(8, 8), classes=("cat", "dog"))
    assert main(["ingest", str(src), str(src / "aa_v1"), "--size", "8", "8"]) == 0
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert main(["ingest", str(src), str(src / "aa_v2"), "--size", "8", "8"]) == 0
    assert "aa_v1: it holds daskimg stores (an earlier ingest's OUT), no class" in caplog.text
    for v in ("aa_v1", "aa_v2"):
        assert di.open_zarr(src / v / "train.zarr.zip").classes == ("cat", "dog")
    # a grid drawn into it (daskimg show -o SRC/aa_v1/grid.png) made it a class of one image
    assert (
        main(["show", str(src / "aa_v1" / "train.zarr.zip"), "-o", str(src / "aa_v1" / "grid.png")])
        == 0
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="daskimg"):
        assert main(["ingest", str(src), str(src / "aa_v3"), "--size", "8", "8"]) == 0
    assert "with it, 1 other file(s) there: grid.png" in caplog.text
    stored = [di.open_zarr(src / "aa_v3" / f"{s}.zarr.zip") for s in ("train", "valid", "test")]
    walked = sorted(p.relative_to(src).as_posix() for p in (src / "cat").iterdir()) + sorted(
        p.relative_to(src).as_posix() for p in (src / "dog").iterdir()
    )  # the oracle: the class folders' own files
    assert sorted(p for s in stored for p in s.paths) == walked
    assert all(s.classes == ("cat", "dog") for s in stored)


def test_info_fails_on_an_unfinished_store_and_show_names_what_it_cannot_draw(tmp_path, capsys):
    # `daskimg info S && train` went on with a store a kill left unfinished (exit 0);
    # show on a 2-channel store gave matplotlib's bare "Invalid shape"
    two = tmp_path / "two.zarr"
    di.to_zarr(di.ImageSet(np.zeros((4, 6, 6, 2), np.uint8)), two)
    assert main(["info", str(two)]) == 0
    meta = json.loads((two / "zarr.json").read_text())
    attrs = meta["attributes"]["daskimg"]  # as a write killed before its end leaves them
    attrs.update(complete=False, arrays={})
    attrs.pop("attrs_crc32c")
    (two / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(di.errors.IncompleteStoreError):  # the oracle: open_zarr refuses it
        di.open_zarr(two)
    capsys.readouterr()
    assert main(["info", str(two)]) == 1
    assert "not complete (an unfinished write)" in capsys.readouterr().err
    good = di.to_zarr(di.ImageSet(np.zeros((4, 6, 6, 2), np.uint8)), tmp_path / "g.zarr.zip")
    assert main(["show", str(good), "-o", str(tmp_path / "s.png")]) == 2
    assert "show draws images of 1, 3 or 4 channels" in capsys.readouterr().err
    # the same from Python: ImageSet.show() gave matplotlib's "Invalid shape (6, 6, 2)"
    with pytest.raises(ValueError, match=r"images of 2 channels \(uint8\): show draws"):
        di.open_zarr(good).show(n=2)


def test_info_names_an_unfinished_write_beside_a_store_or_without_one(tmp_path, capsys):
    # a killed `ingest --overwrite` left the old train split and the new one's staging
    # folder; a killed first write of valid left only its staging folder: info said
    # nothing of either (exit 0, valid not listed)
    out = tmp_path / "out"
    ds = di.ImageSet(np.zeros((4, 6, 6, 3), np.uint8))
    train = di.to_zarr(ds, out / "train.zarr.zip")
    assert main(["info", str(out)]) == 0
    capsys.readouterr()
    (out / "train.zarr.zip.partial").mkdir()  # what a SIGKILL mid-write leaves
    (out / "valid.zarr.zip.partial").mkdir()
    assert main(["info", str(out)]) == 1
    got = capsys.readouterr()
    assert "train.zarr.zip: an unfinished write of it is beside it" in got.err
    assert "is the store from before it" in got.err
    assert "valid.zarr.zip: " in got.err and "was never finished" in got.err
    assert "train.zarr.zip" in got.out  # the old store is still described
    assert main(["info", train]) == 1
    assert "an unfinished write of it is beside it" in capsys.readouterr().err
    (out / "train.zarr.zip.partial").rmdir()
    assert main(["info", train]) == 0


def test_ctrl_c_is_said_with_the_state_left_not_a_traceback(
    monkeypatch, capsys, image_folder, tmp_path
):
    from daskimg import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "ingest", interrupted)
    assert main(["ingest", str(image_folder), str(tmp_path / "o"), "--size", "8", "8"]) == 130
    assert "interrupted. A store being written is left unfinished" in capsys.readouterr().err


def test_ctrl_c_right_after_a_split_is_published_leaves_the_ingest_unfinished(
    monkeypatch, capsys, tmp_path
):
    # a Ctrl-C as train.zarr.zip was just renamed into place (--overwrite had removed the
    # earlier valid and test) removed the record of an unfinished ingest: OUT held a new
    # train alone, and `daskimg info OUT` said all was well (exit 0)
    import os

    from daskimg.store import location

    src, out = tmp_path / "src", tmp_path / "out"
    di.testing.make_image_folder(src, n=30, classes=("cat", "dog"))
    argv = ["ingest", str(src), str(out), "--size", "8", "8", "--valid", "0.2", "--test", "0.2"]
    assert main(argv) == 0
    real = location.fsync_path

    def then_ctrl_c(path):
        real(path)
        if os.path.abspath(path) == str(out) and not list(out.glob("*.partial")):
            raise KeyboardInterrupt  # the user's Ctrl-C, arriving now

    monkeypatch.setattr(location, "fsync_path", then_ctrl_c)
    assert main([*argv, "--overwrite", "--seed", "1"]) == 130
    monkeypatch.setattr(location, "fsync_path", real)
    assert sorted(p.name for p in out.iterdir()) == [".daskimg-ingest.json", "train.zarr.zip"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 1
    assert "valid.zarr.zip" in capsys.readouterr().err
    assert main([*argv, "--seed", "1"]) == 0  # run again: train kept, the others written
    assert sorted(p.name for p in out.iterdir()) == [
        "test.zarr.zip", "train.zarr.zip", "valid.zarr.zip"
    ]  # fmt: skip
    assert main(["info", str(out)]) == 0


@pytest.mark.parametrize("command", ["ingest", "bench"])
def test_sigterm_cleans_up_as_ctrl_c_does(monkeypatch, capsys, image_folder, tmp_path, command):
    # `kill` (a job scheduler's stop) ended the process at once: bench --codecs left its
    # hidden scratch copy beside the store for good, ingest a .partial and the workers of
    # --scheduler processes
    import signal

    from daskimg.store import write

    out = tmp_path / "o"
    if command == "bench":
        store = di.to_zarr(di.from_folder(image_folder, size=(8, 8)), out / "s.zarr.zip")
        argv = ["bench", store, "--codecs", "--samples", "8"]
    else:
        argv = ["ingest", str(image_folder), str(out), "--size", "8", "8"]
    real = write.write_arrays

    def term_then_write(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next step of this thread
        return real(*args, **kwargs)

    monkeypatch.setattr(write, "write_arrays", term_then_write)
    before = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert main(argv) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else []) == before
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back


def test_a_sigterm_inside_a_finalizer_is_sent_again_not_dropped(monkeypatch):
    # (review) raised inside a weakref callback or __del__ it was printed as "Exception
    # ignored" and dropped: the ingest ran to its end and exited 0
    import signal
    import sys

    from daskimg import cli

    sent = []

    class Timer:
        def __init__(self, delay, function, args):
            self.args = args

        def start(self):
            sent.append(self.args)

    monkeypatch.setattr(cli.threading, "Timer", Timer)

    class Finalized:
        def __del__(self):
            cli._terminated(signal.SIGTERM, sys._getframe())

    Finalized()  # collected at once: no exception here
    assert sent == [(os.getpid(), signal.SIGTERM)]
    with pytest.raises(cli._Terminated):
        cli._terminated(signal.SIGTERM, sys._getframe())


def test_a_rerun_naming_the_default_codec_keeps_the_stores(tmp_path, image_folder, capsys):
    # --codec lz4 given was refused as "other files or settings" against stores written
    # with the default, which is lz4
    out = tmp_path / "out"
    args = ["ingest", str(image_folder), str(out), "--size", "8", "8"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--codec", "lz4"]) == 0
    assert "kept" in capsys.readouterr().out
    assert di.open_zarr(out / "train.zarr.zip").attrs["codec"] == "lz4"  # the store's own word


def test_cli_messages_for_a_damaged_store_a_bad_chunk_and_a_truncated_npy(
    tmp_path, image_folder, capsys
):
    # a re-run over a damaged store said only "exists; pass overwrite=True"; --chunk 0 was
    # refused after "writing train"; convert of a truncated .npy gave numpy's bare "mmap
    # length is greater than file size"
    out = tmp_path / "out"
    args = ["ingest", str(image_folder), str(out), "--size", "8", "8"]
    assert main(args) == 0
    (out / "valid.zarr.zip").write_bytes(b"not a zip")
    capsys.readouterr()
    assert main(args) == 2
    assert "valid.zarr.zip exists but cannot be read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--chunk", "0"])
    assert "a positive whole number, got '0'" in capsys.readouterr().err
    npy = tmp_path / "cut.npy"
    np.save(npy, np.zeros((10, 8, 8, 3), np.uint8))
    npy.write_bytes(npy.read_bytes()[:300])
    assert main(["convert", str(npy), str(tmp_path / "c" / "train.zarr.zip")]) == 2
    assert f"cannot read {str(npy)!r}: mmap length" in capsys.readouterr().err


def test_a_closed_pipe_with_buffered_output_exits_as_the_command_does(ingested):
    # (review) with standard output buffered (no PYTHONUNBUFFERED), the reports went out at
    # exit, after the wrapper was gone: "Exception ignored ... BrokenPipeError", exit 120
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    store = str(ingested / "train.zarr.zip")
    for args in (["info", store, "--json"], ["verify", store]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "daskimg", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        proc.stdout.close()  # the reader is gone before anything is written: `| head -0`
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0, err
        assert "BrokenPipeError" not in err


def test_an_unreadable_system_folder_in_src_does_not_stop_an_ingest(tmp_path, monkeypatch):
    # (review) the look for an earlier OUT listed every folder of SRC: a mount's lost+found
    # (mode 700) stopped the ingest with a bare "Permission denied" for a user not root
    src = tmp_path / "src"
    di.testing.make_image_folder(src, n=8, size=(8, 8), classes=("cat", "dog"))
    (src / "lost+found").mkdir()
    listdir = os.listdir

    def guarded(path="."):
        if str(path).endswith("lost+found"):
            raise PermissionError(13, "Permission denied", str(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", guarded)
    assert main(["ingest", str(src), str(tmp_path / "out"), "--size", "8", "8"]) == 0
    assert di.open_zarr(tmp_path / "out" / "train.zarr.zip").classes == ("cat", "dog")


def test_two_ingests_into_one_out_at_once_are_refused(tmp_path, image_folder, capsys):
    # train/valid from one SRC and test from another, into one OUT at once: each checked
    # OUT's earlier stores before either had written, and OUT held both runs' stores
    from daskimg.store.location import write_lock

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from daskimg.store.location import write_lock\n"
         f"with write_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"  # another ingest into OUT
        assert main(["ingest", str(image_folder), str(out), "--size", "8", "8"]) == 2
        err = capsys.readouterr().err
        assert "another process is writing" in err and "out.lock" in err
        assert not out.exists() or not any(out.iterdir())  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert main(["ingest", str(image_folder), str(out), "--size", "8", "8"]) == 0
    with write_lock(str(out)):  # let go once done (one still held here would be refused)
        pass


def test_a_kept_split_reports_what_its_store_left_out(tmp_path, image_folder, capsys):
    # a re-run kept the stores and printed 0 skipped, and no 'skipped' line, for the split
    # whose store had left a file out
    (image_folder / "ant" / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    argv = ["ingest", str(image_folder), str(out), "--size", "8", "8", "--on-error", "skip"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "kept" in again
    stored = [
        (s, p)
        for s in ("train", "valid", "test")
        for p, _ in di.open_zarr(out / f"{s}.zarr.zip").skipped
    ]
    assert len(stored) == 1
    line = f"skipped ({stored[0][0]}): ant/bad.png"
    assert line in first and line in again


@pytest.mark.parametrize("name", ["run1.zarr", "run1.zarr.zip", "run1.zarr/"])
def test_ingest_out_named_like_a_store_is_refused(tmp_path, image_folder, capsys, name):
    # the folder of split stores, named run1.zarr, was read by info and verify as one store
    # and called damaged
    out = str(tmp_path / name)
    assert main(["ingest", str(image_folder), out, "--size", "8", "8"]) == 2
    assert "named like a store" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_bench_of_a_store_without_images_says_so(tmp_path, capsys):
    # a valid ArrayWriter store (verify: fine) was called damaged by bench
    with di.ArrayWriter(tmp_path / "f.zarr.zip", name="features", shape=(3,), dtype="float32") as w:
        w.append(np.ones((40, 3), "float32"))
    assert main(["verify", str(tmp_path / "f.zarr.zip")]) == 0
    capsys.readouterr()
    assert main(["bench", str(tmp_path / "f.zarr.zip"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds no images, only ['features']" in err and "damaged" not in err


def test_info_of_a_store_whose_every_label_is_minus_one_heads_the_count(tmp_path, capsys):
    # '(no label: -1)  6' came straight under the arrays, read as a third array
    di.to_zarr(
        di.ImageSet(np.zeros((6, 8, 8, 3), np.uint8), -np.ones(6, int)), tmp_path / "u.zarr.zip"
    )
    assert main(["info", str(tmp_path / "u.zarr.zip")]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if "(no label: -1)" in line)
    assert lines[at - 1] == "labels:" and lines[at].split()[-1] == "6"


def test_show_draws_class_names_with_dollar_signs_as_written(tmp_path):
    # matplotlib took "$5-$10" as a formula (drawn as italic math) and failed on an
    # odd number of $ (a bare ParseSyntaxException); the oracle: the same text drawn plain
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from daskimg.show import grid_figure

    classes = ["from_$5_to_$10", "under_$5", "$5-$10"]
    images = np.zeros((3, 8, 8, 3), np.uint8)
    ds = di.ImageSet(images, [0, 1, 2], classes=classes)
    fig = grid_figure(ds, n=3, cols=3)
    renderer = FigureCanvasAgg(fig).get_renderer()
    plain = Figure(dpi=fig.dpi).text(0, 0, "", fontsize=8, parse_math=False)
    for ax in (ax for ax in fig.axes if ax.images):
        title = ax.title
        plain.set_text(title.get_text())
        assert title.get_text() in classes
        width = title.get_window_extent(renderer).width
        assert width == pytest.approx(plain.get_window_extent(renderer).width)
    store = di.to_zarr(ds, tmp_path / "s.zarr.zip")
    assert main(["show", str(store), "-o", str(tmp_path / "grid.png"), "--n", "3"]) == 0


def test_ingest_of_file_urls_writes_what_their_paths_write(ingested, image_folder, tmp_path):
    # SRC and OUT as file:// URLs: the same stores as the paths give (the local code path)
    out = tmp_path / "by_url"
    args = ["--size", "16", "16", "--chunk", "4"]
    assert main(["ingest", f"file://{image_folder}", f"file://{out}", *args]) == 0
    for split in ("train", "valid", "test"):
        a = plain_group(ingested / f"{split}.zarr.zip")
        b = plain_group(out / f"{split}.zarr.zip")
        for name in ("images", "labels", "paths"):
            np.testing.assert_array_equal(a[name][:], b[name][:])


def test_info_and_verify_say_an_ingest_stopped_between_its_splits(
    image_folder, tmp_path, monkeypatch, capsys
):
    # killed after train was published, OUT held train alone: info and verify exited 0
    import daskimg.store.write as write

    real = write.to_zarr

    def stopped_after_train(part, target, **kw):
        if kw.get("split") != "train":
            raise KeyboardInterrupt  # as a kill between two splits
        return real(part, target, **kw)

    out = tmp_path / "out"
    args = ["ingest", str(image_folder), str(out), "--size", "8", "8"]
    monkeypatch.setattr(write, "to_zarr", stopped_after_train)
    assert main(args) != 0
    monkeypatch.setattr(write, "to_zarr", real)
    assert sorted(p.name for p in out.glob("*.zarr.zip")) == ["train.zarr.zip"]  # the oracle
    capsys.readouterr()
    for command in ("info", "verify"):
        assert main([command, str(out)]) == 1
        err = capsys.readouterr().err
        assert "an ingest into it did not finish" in err
        assert f"{out / 'test.zarr.zip'}, {out / 'valid.zarr.zip'} not written" in err
    assert main(args) == 0  # run again: finished, and said so no more
    capsys.readouterr()
    for command in ("info", "verify"):
        assert main([command, str(out)]) == 0
        assert "did not finish" not in capsys.readouterr().err


def test_show_says_the_file_it_wrote(tmp_path, capsys):
    # `-o grid` said "wrote grid" of grid.png (matplotlib adds the ending); `-o FOLDER` said
    # "wrote FOLDER" of FOLDER.png beside it
    store = di.to_zarr(
        di.ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2), tmp_path / "s.zarr.zip"
    )
    (tmp_path / "pics").mkdir()
    for given, written in (("grid", "grid.png"), ("pics", "pics/grid.png"), ("a.png", "a.png")):
        capsys.readouterr()
        assert main(["show", str(store), "-o", str(tmp_path / given)]) == 0
        assert capsys.readouterr().out.strip() == f"wrote {tmp_path / written}"
        with Image.open(tmp_path / written) as im:  # the oracle: Pillow reads it as a PNG
            assert im.format == "PNG"
    assert not (tmp_path / "pics.png").exists()


@pytest.mark.parametrize("target", ["-5", "0", "nan", "inf"])
def test_bench_refuses_a_target_that_is_no_rate(tmp_path, capsys, target):
    # --target -5 was taken, and printed "keeps up (-5647.42x)"
    store = di.to_zarr(
        di.ImageSet(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2), tmp_path / "s.zarr.zip"
    )
    with pytest.raises(SystemExit) as e:
        main(["bench", str(store), "--target", target])
    assert e.value.code == 2
    assert "a positive number of images a second" in capsys.readouterr().err


def test_a_dashboard_link_that_cannot_be_had_does_not_fail_the_ingest(
    tmp_path, image_folder, monkeypatch
):
    # the link is asked of the scheduler: one lost as a split started writing failed the
    # ingest right there with distributed's traceback ("ConnectionPool is closed"), not
    # with the write's own error
    from distributed import Client, LocalCluster

    def lost(client):
        raise RuntimeError("ConnectionPool is closed")

    monkeypatch.setattr(Client, "dashboard_link", property(lost))
    argv = [str(image_folder), str(tmp_path / "out"), "--size", "8", "8", "--valid", "0.25"]
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        assert main(["ingest", *argv, "--test", "0", "--scheduler", cluster.scheduler_address]) == 0
    assert plain_group(tmp_path / "out" / "train.zarr.zip")["images"].shape[0] > 0


def test_ingest_on_a_dask_scheduler_equals_the_local_one(
    tmp_path, image_folder, monkeypatch, capsys
):
    # --scheduler HOST:PORT: the client is chosen for the ingest only (dask.config), not made
    # the process's default; the stores equal the local scheduler's, read by plain zarr
    from distributed import Client, LocalCluster

    base = [str(image_folder), "--size", "8", "8", "--valid", "0.25", "--test", "0"]
    assert main(["ingest", base[0], str(tmp_path / "local"), *base[1:]]) == 0
    # (no bokeh here: a dashboard link as distributed gives one where it is installed)
    monkeypatch.setattr(Client, "dashboard_link", property(lambda c: "http://h:8787/status"))
    capsys.readouterr()
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        argv = ["ingest", base[0], str(tmp_path / "far"), *base[1:]]
        assert main([*argv, "--scheduler", cluster.scheduler_address]) == 0
    said = capsys.readouterr()
    # printed once, not once per split and per split's labels
    assert (said.out + said.err).count("dask dashboard: http://h:8787/status") == 1
    import dask

    assert dask.config.get("scheduler", None) is None  # nothing left chosen
    for split in ("train", "valid"):
        a = plain_group(tmp_path / "local" / f"{split}.zarr.zip")
        b = plain_group(tmp_path / "far" / f"{split}.zarr.zip")
        for name in ("images", "labels", "paths"):
            np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=f"{split} {name}")


def test_stores_renamed_as_other_splits_are_said_and_a_new_class_overwrites_every_split(
    tmp_path, capsys, caplog
):
    # train.zarr.zip and valid.zarr.zip swapped by hand: the loaders trained on the
    # validation set without a word, info and verify said nothing, and the re-ingest blamed
    # the --valid/--test fractions
    src, out = tmp_path / "src", tmp_path / "out"
    for c in ("b", "c"):
        (src / c).mkdir(parents=True)
        for k in range(10):
            Image.new("RGB", (9, 7), (k, ord(c), 0)).save(src / c / f"{k}.png")
    args = ["ingest", str(src), str(out), "--size", "4", "4", "--valid", "0.2", "--test", "0.2"]
    assert main(args) == 0
    assert main(["info", str(out)]) == 0
    os.replace(out / "train.zarr.zip", out / "t")
    os.replace(out / "valid.zarr.zip", out / "train.zarr.zip")
    os.replace(out / "t", out / "valid.zarr.zip")
    # said once a process, when the store is opened (info, open_zarr, the loaders)
    with caplog.at_level("WARNING", logger="daskimg"):
        for where in (out, out / "train.zarr.zip"):
            assert main(["info", str(where)]) == 1
        di.open_zarr(out / "train.zarr.zip")
    said = [r.getMessage() for r in caplog.records if "holds split" in r.getMessage()]
    assert (
        len(said) == 2
        and "train.zarr.zip is named as split 'train' but holds split 'valid'" in said[0]
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds split 'valid'" in err and "fractions" not in err
    # a class added, with --overwrite: the earlier run's valid and test (numbered without
    # it) are replaced, not refused as numbering their classes otherwise
    (src / "a").mkdir()
    for k in range(10):
        Image.new("RGB", (9, 7), (k, 1, 1)).save(src / "a" / f"{k}.png")
    assert main([*args, "--overwrite"]) == 0
    for split in ("train", "valid", "test"):
        g = plain_group(out / f"{split}.zarr.zip")
        assert g.attrs["daskimg"]["split"] == split
        assert g.attrs["daskimg"]["classes"] == ["a", "b", "c"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
