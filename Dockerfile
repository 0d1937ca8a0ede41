# syntax=docker/dockerfile:1
#
# ortserve on CPU: the official Python image + onnxruntime.
#
#   docker build -t ortserve:0.1.0 .
#   docker run -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models:ro" ortserve:0.1.0
#
# The same recipe as `Dockerfile.gpu`; only the base image and the ONNX Runtime package differ.
# ONNX Runtime is pinned to the release CI tests with.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG ONNXRUNTIME_VERSION=1.32.0
ARG ORTSERVE_VERSION=0.1.0

# --- build: wheels of this checkout, installed into a virtual environment -------------------------
# The same base as the runtime stage, so that the venv's interpreter path and version match.
FROM ${PYTHON_IMAGE} AS build
ARG ONNXRUNTIME_VERSION
ARG ORTSERVE_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client/ client/
COPY server/ server/
# 1. wheels of both distributions from this checkout (the server needs the client: the stubs live there)
# 2. install them with the extra and the pinned ONNX Runtime into a fresh venv; nothing is fetched at run time
# 3. byte-compile, so that a read-only root filesystem costs nothing at import
RUN python3 -m venv /opt/ortserve \
 && /opt/ortserve/bin/pip wheel --no-deps --wheel-dir /wheels ./client . \
 && /opt/ortserve/bin/pip install \
      "/wheels/ortserve_client-${ORTSERVE_VERSION}-py3-none-any.whl" \
      "/wheels/ortserve-${ORTSERVE_VERSION}-py3-none-any.whl[cpu]" \
      "onnxruntime==${ONNXRUNTIME_VERSION}" \
 && /opt/ortserve/bin/python -m compileall -q /opt/ortserve

# --- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG ONNXRUNTIME_VERSION
ARG ORTSERVE_VERSION
LABEL org.opencontainers.image.title="ortserve" \
      org.opencontainers.image.description="KServe V2 / Triton-compatible gRPC inference server for ONNX models (CPU)" \
      org.opencontainers.image.version="${ORTSERVE_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      io.ortserve.onnxruntime="onnxruntime==${ONNXRUNTIME_VERSION}"
# The user owns nothing in the image.
RUN groupadd --system --gid 10001 ortserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin ortserve \
 && mkdir -p /models
COPY --from=build /opt/ortserve /opt/ortserve
# HOME and the only writable path is /tmp (a volume here, an emptyDir in Kubernetes): the root
# filesystem may be mounted read-only. An empty ORTSERVE_MODEL_REPOSITORY serves the bundled demo.
ENV PATH=/opt/ortserve/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    ORTSERVE_MODEL_REPOSITORY=/models \
    ORTSERVE_DEVICE=cpu
VOLUME ["/tmp"]
WORKDIR /tmp
USER 10001:10001
# gRPC (KServe V2 + grpc.health.v1), HTTP (/metrics, /v2/health/live, /v2/health/ready)
EXPOSE 8001 8002
# The server drains on SIGTERM (not ready at once, serves for ORTSERVE_DRAIN_SECONDS, then finishes
# accepted requests within ORTSERVE_GRACE_SECONDS): give `docker stop -t` at least their sum.
STOPSIGNAL SIGTERM
# The project's own client: `ortserve-client health` asks ServerLive and ServerReady (open even with
# authentication on; ready once every model has loaded, not ready from the first moment of SIGTERM) and
# exits 0 only when both are true. Through sh, so that a changed ORTSERVE_GRPC_PORT is followed.
# Kubernetes ignores HEALTHCHECK (it uses the pod's gRPC probes); this is for Docker and Compose.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["/bin/sh", "-c", "exec ortserve-client --url \"127.0.0.1:${ORTSERVE_GRPC_PORT:-8001}\" --timeout 4 health"]
ENTRYPOINT ["ortserve"]
CMD ["serve"]
