"""Check that wheels hold what users and embedders need: python .ci/check_wheel.py WHEEL...

Expected: one compiled module per src/cbn/*.pyx, every .pxd and .pyi of src/cbn, the C-API
headers, py.typed, the C inference library (cbn_model.h, cbn_model.c); and no generated .c file. Runs here (.ci/run) and in cibuildwheel's audit
step for every platform's wheel.
"""
import sys
import zipfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "cbn"


def problems(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    found = []
    for pyx in sorted(SOURCE.glob("*.pyx")):
        if not any(n.startswith(f"cbn/{pyx.stem}.") and n.endswith((".so", ".pyd")) for n in names):
            found.append(f"no compiled module for {pyx.name}")
    wanted = [f"cbn/{p.name}" for p in sorted(SOURCE.glob("*.pxd")) + sorted(SOURCE.glob("*.pyi"))]
    wanted += ["cbn/_capi.h", "cbn/_capi_api.h", "cbn/py.typed", "cbn/_kernels.pyi",
               "cbn/cbn_model.h", "cbn/cbn_model.c"]
    found += [f"missing {name}" for name in wanted if name not in names]
    found += [f"generated C file {name}" for name in sorted(names)
              if name.endswith(".c") and name != "cbn/cbn_model.c"]
    return found


def main(wheels):
    if not wheels:
        sys.exit("usage: python .ci/check_wheel.py WHEEL...")
    failed = False
    for wheel in wheels:
        found = problems(wheel)
        for problem in found:
            print(f"{wheel}: {problem}")
        print(f"{wheel}: {'FAILED' if found else 'contents ok'}")
        failed = failed or bool(found)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
