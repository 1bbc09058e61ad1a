"""The layers of the house (tools/import_graph.py): no cycles, no upward arrows, every module
placed. Needs the source tree (the .pyx files and tools/ are not in the wheel)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "import_graph.py"
PACKAGE = ROOT / "src" / "cbn"
if not (TOOL.exists() and (PACKAGE / "_kernels.pyx").exists()):
    pytest.skip("the import graph is drawn from the source tree, absent here",
                allow_module_level=True)

spec = importlib.util.spec_from_file_location("import_graph", TOOL)
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_cbn_has_no_cycles_and_no_upward_arrows(capsys):
    assert import_graph.main(["import_graph.py", str(PACKAGE)]) == 0
    out = capsys.readouterr().out
    assert "no cycles, no upward arrows" in out
    edges = import_graph.graph(PACKAGE)
    # the arrows the layering rests on are really seen (Python imports, cimports, C files)
    assert {"_training", "_predict", "_model_file", "_kernels"} <= edges["network"]
    assert "_dispatch" in edges["_kernels"] and "_capi" in edges["capi"]
    assert "cbn_model.c" in edges["_inference"]
    assert "_history" in edges["plotting"] and "plotting" not in edges["network"]


def write(folder, files):
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_cycle_an_upward_arrow_and_an_unplaced_module_are_reported(tmp_path):
    write(tmp_path, {
        "network.py": "def f():\n    from cbn.plotting import plot_history\n",  # lazy, counted
        "plotting.py": "from cbn.network import History\n",
        "_kernels.pyx": "from cbn cimport _activations\nimport cbn._validation\n",
        "_activations.pxd": "cdef int x\n",
        "_validation.py": "",
        "newthing.py": "import numpy\n",
    })
    edges = import_graph.graph(tmp_path)
    assert edges["_kernels"] == {"_activations", "_validation"}
    found = import_graph.problems(edges)
    assert "upward arrow: network (hub) -> plotting (front ends)" in found
    assert "upward arrow: _kernels (kernels) -> _validation (validation and helpers)" in found
    assert "cycle: network -> plotting -> network" in found
    assert "newthing is in no layer (add it to LAYERS)" in found
    assert import_graph.main(["import_graph.py", str(tmp_path)]) == 1
