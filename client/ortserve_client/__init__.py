"""Client for ortserve and any KServe V2 / Triton gRPC inference server.

`ortserve_client.proto` holds the generated stubs (package `inference`): messages in
`grpc_service_pb2` and `model_config_pb2`, the service stub in `grpc_service_pb2_grpc`.
They are generated from the repository's `protos/` by `scripts/generate_stubs.py`.

Note: protobuf registers every message name once per process, so these stubs cannot be
imported in the same process as `tritonclient.grpc`, which registers the same
`inference.*` names from its own copy of the protocol.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
