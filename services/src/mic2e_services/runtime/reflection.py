"""gRPC server reflection under both names clients ask for: grpc.reflection.v1 (grpcurl,
Postman and current gRPC libraries try it first) and grpc.reflection.v1alpha (older ones).

grpcio-reflection implements v1alpha only. The v1 protocol is the same messages under
another package (field for field), so its one servicer answers both; for v1 to be
described like any other service, its file is added to the descriptor pool: v1alpha's,
renamed.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["SERVICE_NAMES", "enable_reflection"]

_V1ALPHA = "grpc.reflection.v1alpha"
_V1 = "grpc.reflection.v1"
#: The reflection services a server offers (and lists).
SERVICE_NAMES = (f"{_V1}.ServerReflection", reflection.SERVICE_NAME)


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """grpc/reflection/v1/reflection.proto in `pool`, made from v1alpha's file."""
    try:
        pool.FindServiceByName(SERVICE_NAMES[0])
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # (setting it on a scalar field is an error)
                field.type_name = field.type_name.replace(f".{_V1ALPHA}.", f".{_V1}.")
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(f".{_V1ALPHA}.", f".{_V1}.")
            method.output_type = method.output_type.replace(f".{_V1ALPHA}.", f".{_V1}.")
    pool.Add(proto)


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serve reflection (v1 and v1alpha) listing `service_names` and itself."""
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    servicer = reflection.aio.ReflectionServicer([*service_names, *SERVICE_NAMES], pool=pool)
    # Same wire format: v1alpha's messages parse and serialize v1's bytes.
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
    for name in SERVICE_NAMES:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),))
