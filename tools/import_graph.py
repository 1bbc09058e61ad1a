"""Draw and check cbn's import graph: python tools/import_graph.py [src/cbn]

Reads every module of the package as text (nothing is imported): Python imports in .py files
(also those inside functions), imports, cimports and includes in .pyx/.pxd files, and the C
files they compile in (``cdef extern from "cbn_model.c"``, ``#include "..."``). A module is
its stem: _batchnorm.pyx and _batchnorm.pxd are one node. Prints each layer with its modules
and their arrows, top to bottom, then checks the house rules and exits 1 if one is broken:

* every module of the folder is in exactly one layer of LAYERS (a new file must be placed);
* no arrow points to a higher layer (a layer knows only itself and the ones below);
* no cycles, within a layer either.
"""
import ast
import re
import sys
from pathlib import Path

# Top to bottom. The modules of "parts of Network" each hold one subject of Network (a mixin
# or the functions its methods call) and receive the network as an argument; none of them
# imports cbn.network.
LAYERS = [
    ("front ends", ["__main__", "_tables", "sklearn", "plotting", "datasets", "_datasets"]),
    ("package", ["__init__"]),
    ("hub", ["network"]),
    ("parts of Network", ["_training", "_checkpoint", "_progress", "_history", "_predict",
                          "_model_file", "_onnx", "_distributed", "_batches", "_layers", "callbacks",
                          "optimizers"]),
    ("validation and helpers", ["_validation", "_threads", "_safetensors"]),
    ("kernels", ["capi", "_capi", "_kernels", "_dispatch", "_activations", "_batchnorm",
                 "_batchnorm_avx2", "_losses", "_optim", "_optim_avx2", "_inference",
                 "_inference_avx2", "_parallel"]),
    ("C library", ["cbn_model.c", "cbn_model.h"]),
    ("version", ["_version"]),
]
SOURCES = (".py", ".pyx", ".pxd")
_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\s+(.+)|c?import\s+([\w., ]+))")
_C_FILE = re.compile(r'^\s*(?:cdef\s+extern\s+from|#\s*include|include)\s+"([^"]+)"')


def node_of(path):
    return path.name if path.suffix in (".c", ".h") else path.stem


def package_targets(module, names, modules):
    """The nodes that `from <module> import <names>` (or cimport) reaches inside cbn."""
    if module == "cbn":  # a submodule by name, else a name the package's __init__ exports
        return {name if name in modules else "__init__" for name in names}
    if module.startswith("cbn."):
        return {module.split(".")[1]}
    return set()


def python_edges(source, modules):
    edges = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            edges |= package_targets(node.module, [a.name for a in node.names], modules)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cbn":
                    edges.add("__init__")
                elif alias.name.startswith("cbn."):
                    edges.add(alias.name.split(".")[1])
    return edges


def cython_edges(source, modules):
    edges = set()
    for line in source.splitlines():
        match = _CYTHON_IMPORT.match(line)
        if match and match.group(1):
            names = [n.split(" as ")[0].strip(" ()") for n in match.group(2).split(",")]
            edges |= package_targets(match.group(1), names, modules)
        elif match:
            for name in match.group(3).split(","):
                name = name.split(" as ")[0].strip()
                edges |= {name.split(".")[1]} if name.startswith("cbn.") else set()
        c_file = _C_FILE.match(line)
        if c_file:
            edges.add(node_of(Path(c_file.group(1))))
    return edges


def graph(folder):
    """{node: set of nodes it imports, cimports or includes} for the package in folder."""
    files = [p for p in sorted(folder.iterdir()) if p.suffix in SOURCES + (".c", ".h")
             and not (p.suffix == ".c" and p.with_suffix(".pyx").exists())]  # generated C
    files = [p for p in files if not p.name.startswith("_capi") or p.suffix != ".h"]
    modules = {node_of(p) for p in files}
    edges = {m: set() for m in modules}
    for path in files:
        text = path.read_text(encoding="utf-8")
        found = python_edges(text, modules) if path.suffix == ".py" else cython_edges(text, modules)
        edges[node_of(path)] |= {t for t in found if t in modules and t != node_of(path)}
    return edges


def problems(edges, layers=LAYERS):
    """The broken rules, as sentences (empty if the house is in order)."""
    rank = {}
    found = []
    for i, (_, members) in enumerate(layers):
        for module in members:
            if module in rank:
                found.append(f"{module} is in two layers")
            rank[module] = i
    found += [f"{m} is in no layer (add it to LAYERS)" for m in sorted(edges) if m not in rank]
    for module in sorted(edges):
        for target in sorted(edges[module]):
            if module in rank and target in rank and rank[target] < rank[module]:
                found.append(f"upward arrow: {module} ({layers[rank[module]][0]}) -> "
                             f"{target} ({layers[rank[target]][0]})")
    found += [f"cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return found


def cycles(edges):
    """One cycle through each strongly connected group of modules (depth-first search)."""
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def report(edges, layers=LAYERS):
    lines = []
    for name, members in layers:
        present = [m for m in members if m in edges]
        if not present:
            continue
        lines.append(f"{name}:")
        for module in present:
            arrows = ", ".join(sorted(edges[module])) or "-"
            lines.append(f"    {module:16} -> {arrows}")
    return "\n".join(lines)


def main(argv):
    folder = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "cbn"
    edges = graph(folder)
    print(report(edges))
    found = problems(edges)
    for problem in found:
        print(f"PROBLEM: {problem}")
    n_arrows = sum(len(t) for t in edges.values())
    print(f"{len(edges)} modules, {n_arrows} arrows: " + (
        f"{len(found)} problems" if found else "no cycles, no upward arrows"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
