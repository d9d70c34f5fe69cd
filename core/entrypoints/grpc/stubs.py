"""TEI's ``tei.proto`` compiled into message classes and service stubs when first needed.

grpcio-tools compiles the file in memory (``grpc.protos_and_services``): nothing is generated into
the source tree or the installed package. It is compiled under TEI's own file name, ``tei.proto``,
so a client generated from TEI's proto in the same process (``protoc -I. tei.proto``) registers the
same file and shares these classes instead of clashing with them; its module names
(``tei_pb2``, ``tei_pb2_grpc``) are left to such a client.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import ModuleType

from ...contracts.errors import MissingDependency

#: TEI's gRPC API definition, as TEI publishes it, in the folder of third-party files (vendor/PROTO_ORIGIN.md).
PROTO = Path(__file__).parent / "vendor" / "tei.proto"
#: What the gRPC server needs beyond poolkit's own dependencies.
NEEDS = "the gRPC server needs grpcio, grpcio-tools and grpcio-health-checking: pip install 'poolkit[grpc]'"


@functools.cache
def tei() -> tuple[ModuleType, ModuleType]:
    """TEI's message classes and its services' stubs and servicers (``tei_pb2``, ``tei_pb2_grpc``).

    Raises:
        MissingDependency: grpcio or grpcio-tools is not installed.
    """
    try:
        import grpc
        import grpc_tools  # noqa: F401 - grpc.protos_and_services compiles with it
    except ImportError:
        raise MissingDependency(NEEDS) from None
    names = ("tei_pb2", "tei_pb2_grpc")
    before = {name: sys.modules[name] for name in names if name in sys.modules}
    folder = str(PROTO.parent)
    sys.path.insert(0, folder)  # protoc finds imported .proto files on sys.path
    try:
        return grpc.protos_and_services("tei.proto")
    finally:
        sys.path.remove(folder)
        for name in names:  # the modules stay reachable through what this returns
            sys.modules.pop(name, None)
        sys.modules.update(before)
