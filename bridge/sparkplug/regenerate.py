"""Regenerate ``sparkplug_b_pb2.py`` and its stub ``sparkplug_b_pb2.pyi`` from
``sparkplug_b.proto``, with protoc as the pinned ``grpcio-tools`` (a dev extra) ships it::

    .venv/bin/python -m bridge.sparkplug.regenerate

The generated code names the protobuf version it was made for (``Protobuf Python Version``) and
refuses to load under an older runtime, so the ``protobuf`` lower bound in pyproject.toml follows
the protoc of the pinned grpcio-tools. ``tests/unit/test_sparkplug_schema.py`` regenerates into
a temporary folder and fails while the committed files differ.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parents[1]  # the folder holding bridge/: the proto's import path
PROTO = Path("bridge") / "sparkplug" / "sparkplug_b.proto"  # its name in the descriptor pool
GENERATED = ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi")


def generate(out_root: Path) -> list[Path]:
    """Run protoc on the proto into ``out_root``/bridge/sparkplug; the files it wrote."""
    from grpc_tools import protoc  # dev-time only: the runtime needs the protobuf package alone

    source = out_root / PROTO
    source.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != (ROOT / PROTO).resolve():
        shutil.copyfile(ROOT / PROTO, source)
    argv = ["protoc", f"-I{out_root}", f"--python_out={out_root}", f"--pyi_out={out_root}"]
    if protoc.main([*argv, str(source)]) != 0:
        raise RuntimeError(f"protoc failed on {source}")
    return [source.parent / name for name in GENERATED]


def main() -> int:
    for path in generate(ROOT):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
