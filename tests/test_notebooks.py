"""The notebooks in ``notebooks/`` run from top to bottom, so they can never go stale.

Each notebook is executed in a fresh kernel started with this interpreter (the venv's
python, whatever kernel specs the machine has installed), with this source tree first on
its ``PYTHONPATH``, in ``tmp_path``. A cell that raises fails the test with the cell and its
traceback; each notebook ends with a check of its own (a model's accuracy above twice
chance, boxes that follow their objects, volumes that keep their values).

The notebooks are committed *with* their outputs, so a reader sees the figures on GitHub.
The test checks that those outputs are what the notebook produces now (the same kinds of
output from every cell: text, a picture, ...), and that the figures the README shows
(``docs/*.png``, named in a cell's ``daskimg.figure`` metadata) are that cell's picture.
To refresh the committed outputs and those figures after editing a notebook::

    python tests/test_notebooks.py                      # all of them
    python tests/test_notebooks.py 05-boxes-and-masks   # one
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from traitlets import default  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 300  # seconds per cell; each notebook takes well under a minute in all

#: notebook -> modules it needs besides daskimg's own dependencies
CASES = {
    "01-quickstart.ipynb": ("torch", "matplotlib"),
    "02-keras.ipynb": ("keras", "torch", "matplotlib"),
    "03-distributed.ipynb": ("distributed",),
    "04-features.ipynb": ("torch", "matplotlib"),
    "05-boxes-and-masks.ipynb": ("matplotlib",),
    "06-volumes.ipynb": ("matplotlib",),
}

#: notebook -> how many pictures it shows at least (a reader should see figures)
PICTURES = {
    "01-quickstart.ipynb": 2,
    "02-keras.ipynb": 1,
    "04-features.ipynb": 1,
    "05-boxes-and-masks.ipynb": 3,
    "06-volumes.ipynb": 2,
}


class _ThisPythonSpecs(KernelSpecManager):
    """Kernel specs whose ``python3`` is always this interpreter."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != "python3":
            return super().get_kernel_spec(kernel_name)
        return KernelSpec(
            name="python3",
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python 3 ({sys.executable})",
            language="python",
        )


class _ThisPythonKernel(AsyncKernelManager):
    """A kernel manager that starts ``python3`` kernels with this interpreter."""

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return _ThisPythonSpecs(data_dir=self.data_dir)


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this one, with this source tree first on ``PYTHONPATH``
    (an editable install elsewhere must not be what the notebooks test), inline figures
    (a user's ``MPLBACKEND``, e.g. Agg, would stop them) and no preset Keras backend."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    for name in ("MPLBACKEND", "KERAS_BACKEND"):
        env.pop(name, None)
    return env


def run_notebook(nb, path: Path):
    """Execute ``nb`` in place in a fresh kernel whose working directory is ``path``."""
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        kernel_manager_class=_ThisPythonKernel,
        resources={"metadata": {"path": str(path)}},
        record_timing=False,  # no timestamps in committed notebooks
    )
    return client.execute(env=kernel_env())


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs(nb, tag: str) -> list:
    """The outputs of the code cell tagged ``tag`` (exactly one must be)."""
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0].outputs


def stdout(cell_outputs: list) -> str:
    return "".join(o.text for o in cell_outputs if o.output_type == "stream" and o.name == "stdout")


def coalesce(cell) -> None:
    """Merge consecutive outputs of one stream (the kernel splits them as it flushes)."""
    merged: list = []
    for o in cell.outputs:
        if merged and o.output_type == "stream" and merged[-1].get("name") == o.name:
            merged[-1].text += o.text
        else:
            merged.append(o)
    cell.outputs = merged


def shape(cell) -> list[tuple[str, ...]]:
    """What kinds of output a cell shows: stream names and MIME types, not their text."""
    coalesce(cell)
    kinds = []
    for o in cell.outputs:
        if o.output_type == "stream":
            kinds.append(("stream", o.name))
        elif o.output_type in ("display_data", "execute_result"):
            kinds.append((o.output_type, *sorted(o.get("data", {}))))
        else:
            kinds.append((o.output_type,))
    return kinds


#: picture outputs, and the file ending a figure of each kind gets in docs/
PICTURE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg"}


def cell_pictures(cell) -> list[tuple[str, bytes]]:
    """``(MIME type, bytes)`` of every picture a cell shows."""
    return [
        (kind, base64.b64decode(o["data"][kind]))
        for o in cell.outputs
        for kind in PICTURE_TYPES
        if kind in o.get("data", {})
    ]


def pictures(nb) -> list[tuple[str, bytes]]:
    return [p for c in code_cells(nb) for p in cell_pictures(c)]


def docs_figures(nb) -> dict[str, bytes]:
    """``{docs path: picture}`` for the cells whose ``daskimg.figure`` metadata names a file."""
    found = {}
    for c in code_cells(nb):
        target = c.get("metadata", {}).get("daskimg", {}).get("figure")
        if target:
            shown = cell_pictures(c)
            assert len(shown) == 1, f"the cell for {target} must show exactly one picture"
            kind, data = shown[0]
            assert target.endswith(PICTURE_TYPES[kind]), f"{target}: the cell shows {kind}"
            found[target] = data
    return found


def test_kernel_is_this_python_and_this_tree(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "import sys, daskimg\nprint(sys.executable)\nprint(daskimg.__file__)"
            )
        ]
    )
    run_notebook(nb, tmp_path)
    executable, module = stdout(nb.cells[0].outputs).split()
    assert Path(executable) == Path(sys.executable)
    assert Path(module) == ROOT / "daskimg" / "__init__.py"


def test_notebooks_are_committed_executed():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(CASES), "every notebook needs a case in tests/test_notebooks.py"
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", name
        cells = code_cells(nb)
        counts = [c.execution_count for c in cells]
        assert counts == list(range(1, len(cells) + 1)), (
            f"{name}: commit it executed top to bottom: python tests/test_notebooks.py {name}"
        )
        for c in cells:
            assert "execution" not in c.metadata, f"{name}: timings in cell {c.id}"
            assert not [o for o in c.outputs if o.output_type == "error"], name
            assert not [o for o in c.outputs if o.get("name") == "stderr"], name
        assert len(pictures(nb)) >= PICTURES.get(name, 0), f"{name} should show its figures"


def test_docs_figures_come_from_the_notebooks():
    shown = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        shown.update(docs_figures(nbformat.read(path, as_version=4)))
    assert shown, "the README's figures come from the notebooks"
    for target, png in shown.items():
        assert (ROOT / target).read_bytes() == png, (
            f"{target} is not the committed figure of its notebook: python tests/test_notebooks.py"
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs(name, tmp_path):
    missing = [m for m in CASES[name] if find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    run_notebook(nb, tmp_path)  # raises CellExecutionError naming the cell that failed

    produced = [o for c in code_cells(nb) for o in c.outputs]
    assert not [o for o in produced if o.output_type == "error"]
    # warnings (and anything else a library complains about) show up on stderr
    stderr = "".join(o.text for o in produced if o.output_type == "stream" and o.name == "stderr")
    assert not stderr, f"{name} wrote to stderr:\n{stderr}"
    # the committed outputs are what the notebook shows now (refresh them if not)
    for old, new in zip(code_cells(committed), code_cells(nb), strict=True):
        assert shape(old) == shape(new), (
            f"{name}, cell {new.id}: committed outputs {shape(old)}, now {shape(new)}; "
            f"refresh them: python tests/test_notebooks.py {name}"
        )

    if name == "01-quickstart.ipynb":
        text = stdout(outputs(nb, "info"))
        assert "format" in text and "version 1" in text, text
        grid = [o for o in outputs(nb, "grid") if "image/png" in o.get("data", {})]
        assert len(grid) == 1, "the grid cell should show one PNG picture"
    assert len(pictures(nb)) >= PICTURES.get(name, 0)


def refresh(names: list[str]) -> None:
    """Execute notebooks in place (in a temporary folder) and write the docs figures."""
    for name in names or sorted(CASES):
        name = name if name.endswith(".ipynb") else f"{name}.ipynb"
        path = NOTEBOOKS / name
        nb = nbformat.read(path, as_version=4)
        for c in code_cells(nb):
            c.outputs, c.execution_count = [], None
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            run_notebook(nb, Path(tmp))
        for c in code_cells(nb):
            coalesce(c)
        nbformat.write(nb, path)
        for target, png in docs_figures(nb).items():
            (ROOT / target).write_bytes(png)
            print(f"  wrote {target}")
        print(f"{name}: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    refresh(sys.argv[1:])
