"""ortserve: a KServe V2 / Triton-compatible gRPC inference server for ONNX models.

The rooms, and the direction of their imports (down only), as in DESIGN.md:
cli -> app -> protocol -> dataplane -> repository -> batching, runtime ->
observability -> config, errors, dtypes.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
