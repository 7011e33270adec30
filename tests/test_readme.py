"""Every ```python and ```bash block of README.md runs as written, so the README cannot rot.

The blocks run in README order in one temporary folder, the way a reader follows the README:
what a block writes (``out/train.zarr.zip``) is there for the blocks after it. Before the
first block, :func:`workspace` writes the inputs the README says a reader has (``photos/``,
``boxes.csv``, ``scenes/``, ``fisheries/``, ``ct/``, ``data.h5``, ...), from generated
images; the blocks' own text is never changed.

Each Python block runs in a fresh interpreter (this one, with this source tree first on
``PYTHONPATH``); each bash block runs in ``bash -e``, where ``daskimg`` is this tree's command
line. Nothing reaches the network: S3 blocks start moto's server on 127.0.0.1, and the AWS
variables are dummies.

A block right after ``<!-- not run: REASON -->`` is skipped with that reason; there may be at
most :data:`MAX_NOT_RUN` of them. A block that imports a package this environment lacks is
skipped too (e.g. no torch), naming it.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

import daskimg as di
from daskimg.testing import make_object_image, make_object_mask

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: blocks the README may leave unrun (``make demo`` / ``make test``: they build a venv with pip)
MAX_NOT_RUN = 1
TIMEOUT = 600  # seconds per block; the slowest (Lightning, Keras) take about 20 s
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")
#: the header of ``boxes.csv`` (the README shows it with one row)
CSV_HEADER = "path,label,x0,y0,x1,y1,mask"


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    lang: str
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason, if marked ``<!-- not run: ... -->``

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def read_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text (any language), in order."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i] != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md: the block opened at line {start + 1} is never closed")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = NOT_RUN.match(lines[k].strip()) if k >= 0 else None
        if k >= 0 and lines[k].strip().startswith("<!--") and "not run" in lines[k] and not marker:
            raise ValueError(f"README.md line {k + 1}: write <!-- not run: REASON -->")
        code = "\n".join(lines[start + 1 : i]) + "\n"
        found.append(Block(m["lang"], start + 1, code, marker["reason"] if marker else None))
        i += 1
    return found


BLOCKS = [
    b for b in read_blocks(README.read_text(encoding="utf-8")) if b.lang in ("python", "bash")
]


def imported_modules(code: str) -> set[str]:
    """Top-level names of the modules a Python block imports."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


# -- the inputs the README names -----------------------------------------------------------


def make_scenes(root: Path, *, n: int = 12, seed: int = 0) -> list[str]:
    """``scenes/<class>/NNN.jpg`` with one object each, ``scene_masks/`` and ``boxes.csv``.

    Sources of several sizes and aspects; the object is a bright rectangle, its mask holds
    the class id (1 fish, 2 boat) on 0. Returns the CSV's lines.
    """
    rng = np.random.default_rng(seed)
    sizes = [(300, 400), (480, 640), (240, 560), (500, 300)]
    rows = [CSV_HEADER]
    for i in range(n):
        label, class_id = (("fish", 1), ("boat", 2))[i % 2]
        h, w = sizes[i % len(sizes)]
        bw, bh = int(rng.uniform(0.2, 0.5) * w), int(rng.uniform(0.2, 0.5) * h)
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        box = (x0, y0, x0 + bw, y0 + bh)
        image = root / "scenes" / label / f"{i:03d}.jpg"
        mask = root / "scene_masks" / label / f"{i:03d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        mask.parent.mkdir(parents=True, exist_ok=True)
        make_object_image((h, w), box).save(image, quality=90)
        make_object_mask((h, w), [(box, class_id)]).save(mask)
        rows.append(
            f"{image.relative_to(root).as_posix()},{label},{','.join(map(str, box))},"
            f"{mask.relative_to(root).as_posix()}"
        )
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return rows


def make_inputs(root: Path) -> None:
    """Everything the README's blocks read (and that no earlier block writes)."""
    di.testing.make_photo_folder(root / "photos", n_per_class=10, seed=0)
    make_scenes(root)
    # a Kaggle layout: labelled train/, the images to predict on directly in test/
    fish = root / "fisheries"
    di.testing.make_image_folder(
        fish / "train", n=18, size=(90, 120), classes=("ALB", "BET", "YFT"), fmt="jpg"
    )
    for i, src in enumerate(
        di.testing.make_image_folder(root / "flat", n=5, size=(90, 120), fmt="jpg", seed=1)
    ):
        (fish / "test").mkdir(exist_ok=True)
        shutil.move(src, fish / "test" / f"img_{i:05d}.jpg")
    shutil.rmtree(root / "flat")
    di.testing.make_volume_folder(
        root / "ct",
        n=4,
        shapes=[(40, 80, 80), (36, 96, 72)],
        dtype="int16",
        value_range=(-1000, 2000),
    )
    # old arrays to convert
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 2
    h5py = pytest.importorskip("h5py")
    with h5py.File(root / "data.h5", "w") as f:
        f["images"] = images
        f["labels"] = labels
    np.save(root / "images.npy", images)
    np.save(root / "labels.npy", labels)
    np.savez(root / "arrays.npz", x=images, y=labels)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding the README's inputs, where the blocks run."""
    root = tmp_path_factory.mktemp("readme")
    make_inputs(root)
    return root


class Runner:
    """Runs the blocks in README order, each at most once, and keeps what happened."""

    def __init__(self, root: Path, scripts: Path) -> None:
        self.root, self.scripts = root, scripts
        self.results: dict[int, subprocess.CompletedProcess[str] | str] = {}
        bin_dir = scripts / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "daskimg"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m daskimg "$@"\n')
        shim.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "MPLBACKEND": "Agg",
            # dummies: nothing can reach a real endpoint with someone's credentials
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "KERAS_BACKEND"):
            self.env.pop(name, None)  # a block that needs one sets it itself

    def upto(self, k: int) -> subprocess.CompletedProcess[str] | str:
        """Run blocks 0..k that have not run yet; the result of block k (a str: skipped)."""
        for i in range(k + 1):
            if i not in self.results:
                self.results[i] = self._run(BLOCKS[i])
        return self.results[k]

    def _run(self, block: Block) -> subprocess.CompletedProcess[str] | str:
        if block.not_run:
            return f"marked not run: {block.not_run}"
        if block.lang == "python":
            missing = sorted(m for m in imported_modules(block.code) if find_spec(m) is None)
            if missing:
                return f"needs {', '.join(missing)}"
            script = self.scripts / f"{block.id}.py"
            argv = [sys.executable, str(script)]
        else:
            script = self.scripts / f"{block.id}.sh"
            argv = ["bash", "-e", "-o", "pipefail", str(script)]
        script.write_text(block.code)
        return subprocess.run(
            argv,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )


@pytest.fixture(scope="module")
def runner(workspace, tmp_path_factory):
    return Runner(workspace, tmp_path_factory.mktemp("readme-scripts"))


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.splitlines()[-n:])


# -- tests ---------------------------------------------------------------------------------


def test_blocks_are_found_and_few_are_not_run():
    assert len(BLOCKS) >= 15, [b.id for b in BLOCKS]
    not_run = [b for b in BLOCKS if b.not_run]
    assert len(not_run) <= MAX_NOT_RUN, (
        f"{len(not_run)} README blocks are marked not run "
        f"({', '.join(b.id for b in not_run)}); make them run instead"
    )
    # other fences (```text, bare ```) are fine, but a typo would silently skip a block
    others = {b.lang for b in read_blocks(README.read_text(encoding="utf-8"))} - {"python", "bash"}
    assert others <= {"", "text"}, others


def test_not_run_marker_needs_a_reason():
    assert read_blocks("<!-- not run: needs a GPU -->\n```python\nx\n```\n")[0].not_run == (
        "needs a GPU"
    )
    assert read_blocks("text\n\n```bash\nls\n```\n")[0].not_run is None
    with pytest.raises(ValueError, match="REASON"):
        read_blocks("<!-- not run -->\n```python\nx\n```\n")
    with pytest.raises(ValueError, match="never closed"):
        read_blocks("```python\nx\n")


@pytest.mark.slow
@pytest.mark.parametrize("k", range(len(BLOCKS)), ids=[b.id for b in BLOCKS])
def test_block_runs_as_written(runner, k):
    block = BLOCKS[k]
    result = runner.upto(k)
    if isinstance(result, str):
        pytest.skip(f"README.md line {block.line}: {result}")
    if result.returncode != 0:
        pytest.fail(
            f"README.md block at line {block.line} ({block.lang}) exited {result.returncode}:\n"
            f"{block.code}\n--- stdout\n{_tail(result.stdout)}\n--- stderr\n{_tail(result.stderr)}",
            pytrace=False,
        )


def test_csv_shown_is_the_csv_read(workspace):
    """The README shows ``boxes.csv`` (its header and a row); the blocks read that file."""
    shown = [b for b in read_blocks(README.read_text(encoding="utf-8")) if b.lang == "text"]
    csv_blocks = [b for b in shown if b.code.startswith("path,")]
    assert len(csv_blocks) == 1
    lines = csv_blocks[0].code.splitlines()
    assert lines[0] == CSV_HEADER
    assert set(lines) <= set((workspace / "boxes.csv").read_text().splitlines())


def test_pictures_and_links_exist():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(((?:docs|notebooks|examples|tests|bench)/[^)#\s]+)\)", text)
    assert targets
    assert [t for t in targets if not (ROOT / t).exists()] == []
    # paths named in backquotes: `tests/test_boxes.py`, `bench/bench_convert.py`, ...
    named = re.findall(r"`((?:tests|bench|examples|daskimg)/[\w/.-]+\.(?:py|md))`", text)
    assert [t for t in named if not (ROOT / t).exists()] == []


@pytest.mark.slow
def test_demo_runs(tmp_path):
    """``make demo`` (not run above: it builds a venv) runs ``examples/demo.py``."""
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--out", "demo", "--per-class", "10"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
            "MPLBACKEND": "Agg",
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "every chunk present and matching its checksum" in result.stdout
    assert re.search(r"epoch 1: 48 samples in 1 batches", result.stdout), result.stdout
