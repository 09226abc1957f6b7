"""Regenerate the protobuf and gRPC modules under protos/ (or check them).

The .proto files import each other as "protos/NAME.proto" with the repository
root on the include path, so the generated modules import each other as
``from protos import NAME_pb2``: correct imports with no rewriting.
Run ``python tools/gen_protos.py --check`` to fail when they are stale.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    """Write the generated modules for every protos/*.proto under out_dir/protos."""
    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(ROOT)) for p in PROTOS.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    # The mypy plugins are console scripts installed beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_names(folder: Path) -> set[str]:
    """The generated module file names in folder."""
    return {p.name for p in folder.iterdir() if p.name.endswith(GENERATED_SUFFIXES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the modules are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        fresh_protos = fresh / "protos"
        new, old = generated_names(fresh_protos), generated_names(PROTOS)
        if args.check:
            stale = sorted(
                name
                for name in new | old
                if name not in new
                or name not in old
                or not filecmp.cmp(fresh_protos / name, PROTOS / name, shallow=False)
            )
            if stale:
                print("stale generated modules (run tools/gen_protos.py):", *stale, sep="\n  ")
                return 1
            print("generated modules are up to date")
            return 0
        for name in old - new:
            (PROTOS / name).unlink()
        for name in new:
            shutil.copyfile(fresh_protos / name, PROTOS / name)
        print(f"wrote {len(new)} modules to {PROTOS}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
