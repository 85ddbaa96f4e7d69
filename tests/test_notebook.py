"""The Python API in Jupyter: docs/quickstart.ipynb runs cell by cell (so it cannot rot),
figures show inline, training shows its rows, and interrupting the kernel stops a run
after a checkpoint while the kernel lives on."""

import asyncio
import json
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "quickstart.ipynb"


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if kind in o.get("data", {})]


def _text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_notebook_runs_and_shows_figures_and_rows(tmp_path: Path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    # show_batch, the lr_find curve, the losses, the confusion matrix: PNGs inline
    assert len(_outputs(nb, "image/png")) >= 4
    text = _text(nb)
    assert "epoch 0  train_loss=" in text and "epoch 1  train_loss=" in text
    assert "<Figure" in text  # the cells returned Figures (shown as the PNGs above)
    assert (tmp_path / "quickstart-model" / "model.json").is_file()


@pytest.mark.slow
def test_interrupting_the_kernel_stops_after_a_checkpoint_and_keeps_the_kernel(
        tmp_path: Path):
    cells = [
        "from imageclf.core.config import DataConfig, TrainConfig\n"
        "from imageclf.data.shapes import make_shapes_dataset\n"
        "from imageclf.run.runs import RunContext, train_run\n"
        "data = make_shapes_dataset('d', n_train=12, n_valid=4)",
        "train_run(DataConfig.build(path=str(data), size=32, presize=40, bs=8),\n"
        "          TrainConfig.build(arch='resnet10t_narrow', pretrained='none', epochs=200,\n"
        "                            lr='1e-3', out='run'),\n"
        "          RunContext(checkpoint_every=0.001))",
        "print('kernel alive', 1 + 1)",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    done = threading.Event()

    def interrupt_when_training() -> None:
        last = tmp_path / "run" / "checkpoints" / "last.json"
        t0 = time.monotonic()
        while not done.is_set() and time.monotonic() - t0 < 300:
            if last.exists() and client.km is not None:
                time.sleep(0.5)
                # what Jupyter's "interrupt the kernel" does (nbclient's manager is async)
                asyncio.run(client.km.interrupt_kernel())
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=interrupt_when_training)
    watcher.start()
    try:
        client.execute()
    finally:
        done.set()
        watcher.join()
    err = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert err and err[0]["ename"] == "Interrupted", nb.cells[1].outputs
    assert "checkpoint" in err[0]["evalue"]
    assert "kernel alive 2" in _text(nb)  # the next cell ran in the same kernel
    info = json.loads((tmp_path / "run" / "checkpoints" / "last.json").read_text())
    assert info["progress"]["epochs_done"] < 200  # stopped long before the end
