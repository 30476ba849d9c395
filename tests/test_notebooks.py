"""The research notebooks run top to bottom at the small scale (the committed copies keep a full run's outputs)."""
import nbformat
import pytest
from nbclient import NotebookClient

from conftest import CN_DATA, REPO


@pytest.mark.parametrize("name", ["compare_ic_sharpe.ipynb", "forecast_paths.ipynb"])
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOS_NOTEBOOK_SCALE", "small")
    monkeypatch.setenv("QLIB_DATA", str(CN_DATA))
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    client = NotebookClient(notebook, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors
    images = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) >= 2, "the notebook's plots were not drawn"
    nbformat.write(notebook, tmp_path / name)  # kept for inspection, the committed copy is untouched
