"""The lessons: committed clean, each executed top to bottom, each with a checked exercise.

Every notebook in notebooks/ is run headless with nbclient (the kernel is this venv's
python3), with a time limit per cell. A committed notebook must carry no outputs, no
execution counts and no saved widget state: the lessons are run, not read as output.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
LESSONS = ["00_index", "01_rings_and_traps", "02_the_x86_hole", "03_paging_and_tlb",
           "04_ring_minus_one", "05_shadow_vs_nested", "06_paravirtualization",
           "07_software_virtual_machines"]
CELL_TIMEOUT = 300        # seconds; a cold numba cache is warmed by `make test` first


def test_the_lessons_exist_in_order():
    assert [p.stem for p in NOTEBOOKS][:len(LESSONS)] == LESSONS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_widget_state(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: saved widget state"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{path.name} cell {i}: clear the outputs before committing"
        assert "widgets" not in cell.get("metadata", {}), f"{path.name} cell {i}: widget state"


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(outputs):
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        for key in ("text/plain", "text/html", "text/markdown"):
            parts.append(o.get("data", {}).get(key, ""))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def executed():
    """Run each notebook once per session (lazily) and keep the result."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    done = {}

    def run(name):
        if name not in done:
            nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
            nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                    resources={"metadata": {"path": str(ROOT / "notebooks")}}
                                    ).execute()
            done[name] = nb
        return done[name]
    return run


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_runs_top_to_bottom_without_errors(executed, name):
    nb = executed(name)          # raises CellExecutionError on the first failing cell
    for i, cell in enumerate(_code(nb)):
        assert all(o.get("output_type") != "error" for o in cell.outputs), f"{name} code cell {i}"


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_has_a_seeded_exercise_checked_and_solvable(executed, name):
    """The student's placeholder answer gets a 'no answer yet' verdict, and the worked
    solution waits behind a button: Run All shows the button, not the solution."""
    nb = executed(name)
    cells = _code(nb)
    defs = [c for c in cells if "Exercise" in c.source or "exercise" in c.source]
    checks = [c for c in cells if ".check(" in c.source]
    buttons = [c for c in cells if ".solution_button()" in c.source]
    assert defs and checks and buttons, f"{name}: no exercise / check / solution button"
    assert not [c for c in cells if ".reveal()" in c.source], f"{name}: Run All reveals"
    verdicts = _text(checks[0].outputs)
    assert "hvsim-verdict" in verdicts and "no answer yet" in verdicts
    for c in buttons:
        kinds = {k for o in c.outputs for k in o.get("data", {})}
        assert "application/vnd.jupyter.widget-view+json" in kinds, f"{name}: {kinds}"
        assert "text/markdown" not in kinds and "text/html" not in kinds


def test_index_links_every_lesson(executed):
    text = "\n".join(c.source for c in executed("00_index").cells if c.cell_type == "markdown")
    for name in LESSONS[1:]:
        assert f"{name}.ipynb" in text


@pytest.mark.parametrize("name, picture", [
    ("01_rings_and_traps", "viz.timeline("), ("02_the_x86_hole", "viz.ring_diagram("),
    ("02_the_x86_hole", "viz.overhead_bars("),
    ("03_paging_and_tlb", "page_walk("),
    ("04_ring_minus_one", "plot_ticks("), ("04_ring_minus_one", "viz.overhead_bars("),
    ("04_ring_minus_one", "viz.walk_2d("),
    ("05_shadow_vs_nested", "viz.walk_2d("), ("05_shadow_vs_nested", "plot_cycles("),
    ("05_shadow_vs_nested", "plot_sweep("),
    ("06_paravirtualization", "plot_batching("), ("06_paravirtualization", "plot_cycles("),
    ("07_software_virtual_machines", "plot_cycles("),
])
def test_lesson_draws_its_pictures(executed, name, picture):
    """The hvsim.viz pictures the lesson calls come out as images."""
    cells = [c for c in _code(executed(name)) if picture in c.source]
    assert cells, f"{name}: no cell calls {picture}"
    assert all(any("image/png" in o.get("data", {}) for o in c.outputs) for c in cells)
