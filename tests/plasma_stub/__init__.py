"""A client generated from Plasma's original stream.proto, as a Plasma user would have it.

Plasma's messages are named `proto.Request`, `proto.Payload`… and so are the hub's own
(cachewire/v1/plasma.proto, which adds fields). Two files defining the same names cannot
share protobuf's default descriptor pool, so these stubs are loaded into a pool of their
own: the client then knows only Plasma's original contract, as a real Plasma client does.
"""

from google.protobuf import (
    descriptor_pool,
    symbol_database,  # noqa: F401  binds its default to the real pool
)

POOL = descriptor_pool.DescriptorPool()

_default = descriptor_pool.Default
descriptor_pool.Default = lambda: POOL  # read once, by the generated module below
try:
    from tests.plasma_stub import stream_pb2, stream_pb2_grpc
finally:
    descriptor_pool.Default = _default

__all__ = ["POOL", "stream_pb2", "stream_pb2_grpc"]
