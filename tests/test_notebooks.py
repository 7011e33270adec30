"""The notebooks in ``notebooks/`` run from top to bottom, so they can never go stale.

Each notebook is executed in a fresh kernel started with this interpreter (the venv's
python, whatever kernel specs the machine has installed), in ``tmp_path``. A cell that
raises fails the test with the cell and its traceback.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402
from traitlets import default  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 120  # seconds per cell; each notebook takes about 10 s in all

#: notebook -> modules it needs besides daskimg's own dependencies
CASES = {
    "01-quickstart.ipynb": ("torch", "matplotlib"),
    "02-keras.ipynb": ("keras", "torch"),
    "03-distributed.ipynb": ("distributed",),
    "04-features.ipynb": ("torch",),
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


def run_notebook(nb, path: Path):
    """Execute ``nb`` in place in a fresh kernel whose working directory is ``path``."""
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        kernel_manager_class=_ThisPythonKernel,
        resources={"metadata": {"path": str(path)}},
    )
    return client.execute()


def outputs(nb, tag: str) -> list:
    """The outputs of the code cell tagged ``tag`` (exactly one must be)."""
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0].outputs


def stdout(cell_outputs: list) -> str:
    return "".join(o.text for o in cell_outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.fixture
def inline_plots(monkeypatch):
    # a user's MPLBACKEND (e.g. Agg) would reach the kernel and stop inline figures
    monkeypatch.delenv("MPLBACKEND", raising=False)


def test_kernel_is_this_python(tmp_path):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys\nprint(sys.executable)")]
    )
    run_notebook(nb, tmp_path)
    assert Path(stdout(nb.cells[0].outputs).strip()) == Path(sys.executable)


def test_notebooks_are_committed_without_outputs():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(CASES), "every notebook needs a case in tests/test_notebooks.py"
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3", name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{name}: clear the outputs before committing (cell {cell.get('id')})"
                )


@pytest.mark.slow
@pytest.mark.usefixtures("inline_plots")
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs(name, tmp_path):
    missing = [m for m in CASES[name] if find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    run_notebook(nb, tmp_path)  # raises CellExecutionError naming the cell that failed

    produced = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in produced if o.output_type == "error"]
    # warnings (and anything else a library complains about) show up on stderr
    stderr = "".join(o.text for o in produced if o.output_type == "stream" and o.name == "stderr")
    assert not stderr, f"{name} wrote to stderr:\n{stderr}"

    if name == "01-quickstart.ipynb":
        text = stdout(outputs(nb, "info"))
        assert "format" in text and "version 1" in text, text
        pictures = [o for o in outputs(nb, "grid") if "image/png" in o.get("data", {})]
        assert len(pictures) == 1, "the grid cell should show one PNG picture"
