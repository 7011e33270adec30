"""Ctrl-C held back where it would break the process rather than stop the work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from daskimg.interrupts import held_ctrl_c


def test_a_ctrl_c_in_a_held_block_is_raised_when_it_ends():
    done = []

    def work():
        with held_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # Python runs the handler here: noted, not raised
            done.append("the block ran to its end")

    with pytest.raises(KeyboardInterrupt):
        work()
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with held_ctrl_c():  # no Ctrl-C: nothing raised
        pass


_RESIZE = """
import json, sys, warnings
import numpy as np
from PIL import Image
if sys.argv[1] == "broken":
    import numba

    def njit(*args, **kwargs):  # what an earlier Ctrl-C in numba's import leaves
        raise AttributeError("module 'numba' has no attribute 'core'")

    numba.njit = njit
import daskimg as di
Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8)).save(
    sys.argv[2]
)
x = di.imread([sys.argv[2]], size=(31, 47)).compute()
gray = di.imread([sys.argv[2]], size=(90, 120), channels=1).compute()  # no resize: luma only
print(json.dumps(x.ravel().tolist() + gray.ravel().tolist()))
"""


def test_a_broken_numba_resizes_with_pillow_and_says_so(tmp_path):
    # a Ctrl-C inside numba's first import left it half-imported: every later to_zarr or
    # imread in that kernel failed with "module 'numba' has no attribute 'core'"
    script = tmp_path / "resize.py"
    script.write_text(textwrap.dedent(_RESIZE))
    out = {}
    for how in ("numba", "broken"):
        run = subprocess.run(
            [sys.executable, str(script), how, str(tmp_path / f"{how}.jpg")],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        out[how] = (np.array(json.loads(run.stdout.splitlines()[-1])), run.stderr)
    np.testing.assert_array_equal(out["broken"][0], out["numba"][0])  # the same pixels
    assert "the compiled resize failed (AttributeError" in out["broken"][1]
    assert "compiled resize failed" not in out["numba"][1]


def test_workers_of_the_processes_scheduler_exit_when_ingest_is_killed(tmp_path):
    # SIGKILL of `daskimg ingest --scheduler processes` left its worker processes running
    # for good, each holding its memory
    psutil = pytest.importorskip("psutil")

    import daskimg as di

    di.testing.make_image_folder(tmp_path / "src", n=300, classes=("x", "y"), size=(220, 260))
    cmd = [sys.executable, "-m", "daskimg", "ingest", str(tmp_path / "src"), str(tmp_path / "out"),
           "--size", "200", "200", "--workers", "2", "--codec", "zstd", "--scheduler", "processes"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    assert len(workers) >= 2, "the ingest ended before its workers were seen; make it longer"
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=20)
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} worker processes outlived the killed ingest"
