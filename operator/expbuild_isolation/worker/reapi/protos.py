"""The generated REAPI and Remote Workers API modules, from one place.

They come from ``buildgrid-common``, the BuildGrid project's own package of its
generated protocol modules (``buildgrid.common.protos``), which needs only
grpcio, protobuf, pydantic and ruamel.yaml, not the server. The ``reapi`` extra
brings all of it: ``pip install 'expbuild-isolation[reapi]'``. Nothing else in
the project imports ``buildgrid``, so swapping the source is a one-file change.
"""

from __future__ import annotations

try:
    import grpc
    from buildgrid.common.protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from buildgrid.common.protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
    from buildgrid.common.protos.google.bytestream import bytestream_pb2 as bs_pb2
    from buildgrid.common.protos.google.bytestream import bytestream_pb2_grpc as bs_grpc
    from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import bots_pb2
    from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import bots_pb2_grpc as bots_grpc
    from buildgrid.common.protos.google.devtools.remoteworkers.v1test2 import worker_pb2
    from buildgrid.common.protos.google.rpc import code_pb2, error_details_pb2, status_pb2
    from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
except ImportError as exc:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError(
        f"the REAPI worker needs grpcio, protobuf and buildgrid-common ({exc}); "
        f"install them with: pip install 'expbuild-isolation[reapi]'"
    ) from exc

__all__ = ["grpc", "re_pb2", "re_grpc", "bs_pb2", "bs_grpc", "bots_pb2", "bots_grpc", "worker_pb2",
           "code_pb2", "error_details_pb2", "status_pb2", "any_pb2", "duration_pb2", "timestamp_pb2"]
