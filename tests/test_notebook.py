"""The tour notebook runs top to bottom: trains on Fashion-MNIST, exports, checks the engine."""

import pathlib
import sys

import pytest

from tests.conftest import require_fashion_mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "fashion_mnist_tour.ipynb"


# The notebook trains for 60 steps; here for 8 (its BNN_TOUR_STEPS), enough to run every cell.
STEPS = 8


@pytest.mark.slow  # trains on real data, evaluates the test images thrice: about 50 s of CPU
@pytest.mark.parametrize("data", ["exact", "bundled"])
def test_tour_notebook_runs_top_to_bottom_and_the_engine_agrees(monkeypatch, tmp_path, data):
  """exact: the Debian package's Fashion-MNIST; bundled: as where it is not installed."""
  if data == "exact":
    require_fashion_mnist()
  else:  # the notebook's folder of the exact set, made one that does not exist
    monkeypatch.setenv("BNN_TOUR_FASHION_MNIST", str(tmp_path / "no_fashion_mnist"))
  monkeypatch.setenv("BNN_TOUR_STEPS", str(STEPS))  # the kernel inherits this environment
  import nbclient
  import nbformat

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
    notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
  )
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
  outputs = [
    "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    for cell in notebook.cells
    if cell.cell_type == "code"
  ]
  # jupyter_client starts the "python3" kernel with this interpreter (the venv's).
  assert outputs[0].strip() == sys.executable
  text = "\n".join(outputs)
  name, count = ("fashion_mnist", 10000) if data == "exact" else ("fashion_mnist_small", 2000)
  assert f"data: {name} (" in text
  assert f"test accuracy after {STEPS} steps:" in text and f"({count} images)" in text
  assert "deployed size" in text and "compression" in text
  assert "training evaluation:" in text and "same top-1 on 100.00% of the test images" in text
  images = sum(
    o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
    for cell in notebook.cells
    for o in cell.get("outputs", [])
  )
  assert images == 3  # estimators, scale trajectories, sample predictions
