"""The generated REAPI and Remote Workers API modules, from one place.

BuildGrid ships them (a private ``buildgrid._protos`` namespace); we take them
from that dependency rather than copying .proto files, and nothing else in the
project imports ``buildgrid`` directly, so swapping the source is a one-file
change. Install with ``pip install --no-deps buildgrid==0.4.4 grpcio protobuf``
(the server's own dependencies are not needed by the worker).
"""

from __future__ import annotations

try:
    import grpc
    from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
    from buildgrid._protos.google.bytestream import bytestream_pb2 as bs_pb2
    from buildgrid._protos.google.bytestream import bytestream_pb2_grpc as bs_grpc
    from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2
    from buildgrid._protos.google.devtools.remoteworkers.v1test2 import bots_pb2_grpc as bots_grpc
    from buildgrid._protos.google.devtools.remoteworkers.v1test2 import worker_pb2
    from buildgrid._protos.google.rpc import code_pb2, error_details_pb2, status_pb2
    from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError(
        f"the REAPI worker needs grpcio, protobuf and BuildGrid's generated modules ({exc}); "
        f"install them with: pip install grpcio 'protobuf>=6.31' && pip install --no-deps buildgrid==0.4.4"
    ) from exc

__all__ = ["grpc", "re_pb2", "re_grpc", "bs_pb2", "bs_grpc", "bots_pb2", "bots_grpc", "worker_pb2",
           "code_pb2", "error_details_pb2", "status_pb2", "any_pb2", "duration_pb2", "timestamp_pb2"]
