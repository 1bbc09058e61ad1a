"""The type stubs of cbn._kernels (_kernels.pyi) name every public kernel with its parameters
in order: the quick form of the mypy.stubtest run in .ci/packaging, so that a kernel added
without its stub (one of the places CONTRIBUTING.md lists) fails in the ordinary test run."""
import ast
import inspect
from pathlib import Path

import cbn
from cbn import _kernels


def stub_parameters():
    tree = ast.parse((Path(cbn.__file__).parent / "_kernels.pyi").read_text())
    return {f.name: [a.arg for a in f.args.args] for f in tree.body
            if isinstance(f, ast.FunctionDef)}


def compiled_parameters():
    return {name: list(inspect.signature(f).parameters) for name, f in vars(_kernels).items()
            if not name.startswith("_") and type(f).__name__ == "cython_function_or_method"}


def test_every_public_kernel_has_a_stub_with_its_parameters():
    compiled, stubs = compiled_parameters(), stub_parameters()
    assert len(compiled) >= 19  # the kernels are really found
    assert sorted(compiled) == sorted(stubs)
    for name, parameters in compiled.items():
        assert stubs[name] == parameters, name
