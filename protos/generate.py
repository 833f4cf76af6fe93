"""Regenerate chatsrv/_pb from protos/ (`just proto`). Generated code is committed, not edited.

protoc names modules after the .proto path under `-I protos`, so the code lands in
chatsrv/_pb/chatsrv/node/v1/ and grpclib's plugin writes `import chatsrv.node.v1.node_pb2`,
a top-level module that does not exist. This script runs protoc, rewrites that import to the
real package path, and adds the __init__.py files of the generated packages. The .pyi
stubs (--pyi_out) give mypy the message types.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "chatsrv" / "_pb"
PACKAGE = "chatsrv._pb"
SOURCES = ["chatsrv/node/v1/node.proto"]


def main() -> int:
    for child in OUT.glob("*"):
        if child.is_dir():
            shutil.rmtree(child)
    OUT.mkdir(parents=True, exist_ok=True)
    # grpclib's protoc plugin (protoc-gen-grpclib_python) lives beside this interpreter
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={OUT}",
         f"--pyi_out={OUT}", f"--grpclib_python_out={OUT}", *SOURCES],
        check=True, cwd=ROOT, env=env,
    )
    for source in SOURCES:
        module = source.removesuffix(".proto").replace("/", ".")  # chatsrv.node.v1.node
        grpc_file = OUT / (source.removesuffix(".proto") + "_grpc.py")
        text = grpc_file.read_text()
        fixed = re.sub(rf"\b{re.escape(module)}_pb2\b", f"{PACKAGE}.{module}_pb2", text)
        grpc_file.write_text(fixed)
    for directory in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        if directory.name != "__pycache__":
            (directory / "__init__.py").touch()
    print(f"generated {', '.join(SOURCES)} into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
