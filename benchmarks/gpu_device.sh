#!/usr/bin/env bash
# Issue 3's GPU benchmark on a lent GPU machine that has no network (python -m benchmarks.gpu).
#
# That machine's image (see the device tool's KINDS.md) has Python 3.12, numpy, onnx, uvloop,
# prometheus-client, nvidia-ml-py and the CUDA 13 / cuDNN 9 libraries as pip packages, but only
# the CPU onnxruntime, none of ortserve's other dependencies, and no perf_analyzer. So:
#
#   here:   bash benchmarks/gpu_device.sh prepare
#           downloads the missing wheels for cp312 manylinux (onnxruntime-gpu, built for CUDA 13,
#           alone is ~250 MB), copies perf_analyzer with libcudart.so.12 and libb64.so.0d from
#           .ci/venvs/perf-analyzer and the system, and packs it all into parts of at most
#           PART_MB (58) MiB: .gpu-bundle/1 .. .gpu-bundle/N (ignored by git through
#           .git/info/exclude), because one device call carries at most 64 MiB.
#   there:  one call per part but the last, back to back (the machine stays warm ~30 s):
#             run(carry=[".gpu-bundle/K"], command="bash benchmarks/gpu_device.sh stage")
#           then the last part and the benchmark in one call:
#             run(carry=[".gpu-bundle/N"], command="bash benchmarks/gpu_device.sh run", timeout_s=600)
#           `prepare` prints these calls with the real N.
#
# `stage` copies the parts carried in this call to /tmp/ortserve-gpu/parts (kept while the
# machine stays warm). `run` stages too, checks that every part is there (else exit 2, naming
# the missing ones), unpacks, installs the wheels into /tmp/ortserve-gpu/site (--no-index),
# puts the device python's nvidia/*/lib folders on LD_LIBRARY_PATH and runs
#   python3 -m benchmarks.gpu --json $OUT/gpu.json [ARGS...]
# with its output also in $OUT/gpu.log. Its exit status is the benchmark's (0 met, 3 missed,
# 2 cannot start; 124 cut off by LIMIT_S). TAG=name writes gpu-name.json and gpu-name.log instead,
# so that one call can run the benchmark twice (e.g. with and without a server flag), LIMIT_S=s
# bounding each run:
#   LIMIT_S=300 bash benchmarks/gpu_device.sh run ARGS; TAG=b bash benchmarks/gpu_device.sh run ARGS --server-arg=...
# MODULE=benchmarks.gpu_probe TAG=probe bash benchmarks/gpu_device.sh run ARGS runs the probe instead;
# wheels carried in .gpu-extra/ (py-spy: `pip download py-spy -d .gpu-extra ...` here) are installed
# to /tmp/ortserve-gpu/extra and their scripts put on PATH.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$repo/.gpu-bundle"
work=/tmp/ortserve-gpu
ORT_GPU="${ORT_GPU:-onnxruntime-gpu==1.30.0}"   # CUDA 13 + cuDNN 9 build, as the image's libraries
PART_MB="${PART_MB:-58}"
log() { printf 'gpu_device: %s\n' "$*" >&2; }

prepare() {
  local python="$repo/.venv/bin/python" pa_venv="$repo/.ci/venvs/perf-analyzer"
  [[ -x "$python" ]] || python=python3
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/wheels" "$stage/pa"
  # ortserve's runtime dependencies (pyproject.toml) at this checkout's versions of grpcio and
  # protobuf (its generated stubs check them), minus what the image already has.
  local grpc_v health_v proto_v
  grpc_v="$("$python" -c 'import grpc; print(grpc.__version__)')"
  health_v="$("$python" -c 'from importlib.metadata import version; print(version("grpcio-health-checking"))')"
  proto_v="$("$python" -c 'import google.protobuf as p; print(p.__version__)')"
  "$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 --platform any \
    -d "$stage/wheels" \
    "$ORT_GPU" "grpcio==$grpc_v" "grpcio-health-checking==$health_v" "protobuf==$proto_v" \
    "opentelemetry-api>=1.30" "opentelemetry-sdk>=1.30" "opentelemetry-exporter-otlp-proto-grpc>=1.30" \
    "PyJWT[crypto]>=2.10"
  # In the image already (KINDS.md): keep its builds, which torch and onnx were installed with.
  (cd "$stage/wheels" && rm -f numpy-* typing_extensions-* packaging-* flatbuffers-* sympy-* mpmath-* \
    zipp-* nvidia_ml_py-* prometheus_client-* uvloop-* psutil-*)
  [[ -x "$pa_venv/bin/perf_analyzer" ]] || die "no perf_analyzer in $pa_venv: run bash .ci/setup-perf-analyzer.sh"
  cp "$pa_venv/bin/perf_analyzer" "$stage/pa/"
  cp -L "$(find "$pa_venv" -name 'libcudart.so.12' -print -quit)" "$stage/pa/"
  cp -L /lib/x86_64-linux-gnu/libb64.so.0d "$stage/pa/"
  rm -rf "$bundle"
  mkdir -p "$bundle/parts"
  tar -C "$stage" -cf - wheels pa | split -b "${PART_MB}M" -d -a 2 - "$bundle/parts/bundle.tar."
  local n=0 k part
  for part in "$bundle"/parts/bundle.tar.*; do
    n=$((n + 1))
    mkdir -p "$bundle/$n"
    mv "$part" "$bundle/$n/"
  done
  rmdir "$bundle/parts"
  for ((k = 1; k <= n; k++)); do cat "$bundle/$k"/bundle.tar.*; done | sha256sum | cut -d' ' -f1 >"$stage/sha"
  for part in "$bundle"/*/; do
    printf 'parts=%s\nsha256=%s\n' "$n" "$(cat "$stage/sha")" >"$part/manifest"
  done
  grep -qx '/.gpu-bundle/' "$repo/.git/info/exclude" 2>/dev/null || echo '/.gpu-bundle/' >>"$repo/.git/info/exclude"
  log "$(du -sh "$bundle" | cut -f1) in $n parts; wheels: $(cd "$stage/wheels" && ls | tr '\n' ' ')"
  log "device calls, back to back:"
  for ((k = 1; k < n; k++)); do
    log "  run(carry=[\".gpu-bundle/$k\"], command=\"bash benchmarks/gpu_device.sh stage\", timeout_s=120)"
  done
  log "  run(carry=[\".gpu-bundle/$n\"], command=\"bash benchmarks/gpu_device.sh run\", timeout_s=600)"
}

die() { log "error: $*"; exit 2; }

stage() {
  mkdir -p "$work/parts"
  local found=0 dir
  for dir in "$bundle"/*/; do
    [[ -f "$dir/manifest" ]] || continue
    cp "$dir"/bundle.tar.* "$dir/manifest" "$work/parts/"
    found=1
  done
  [[ $found == 1 ]] || log "no part carried in this call (.gpu-bundle/K)"
  log "staged: $(cd "$work/parts" && ls bundle.tar.* 2>/dev/null | tr '\n' ' ')"
}

run() {
  stage
  [[ -f "$work/parts/manifest" ]] || die "no manifest staged: run 'bash benchmarks/gpu_device.sh prepare' here first"
  # shellcheck disable=SC1091
  source "$work/parts/manifest"
  local i missing=()
  for ((i = 0; i < parts; i++)); do
    [[ -f "$work/parts/bundle.tar.$(printf '%02d' "$i")" ]] || missing+=("$((i + 1))")
  done
  ((${#missing[@]} == 0)) || die "parts not staged on this machine: ${missing[*]} (the machine went cold? stage them again)"
  [[ "$(cat "$work"/parts/bundle.tar.* | sha256sum | cut -d' ' -f1)" == "$sha256" ]] || die "the parts do not match"
  if [[ ! -f "$work/installed" ]]; then
    rm -rf "$work/bundle" "$work/site"
    mkdir -p "$work/bundle"
    cat "$work"/parts/bundle.tar.* | tar -C "$work/bundle" -xf -
    python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" \
      "$work"/bundle/wheels/*.whl
    chmod +x "$work/bundle/pa/perf_analyzer"
    printf '#!/usr/bin/env bash\nexport LD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\nexec %s "$@"\n' \
      "$work/bundle/pa" "$work/bundle/pa/perf_analyzer" >"$work/perf_analyzer_wrapped"
    chmod +x "$work/perf_analyzer_wrapped"
    touch "$work/installed"
  fi
  # The CUDA 13 / cuDNN 9 libraries onnxruntime-gpu dlopens, from the image's nvidia-* packages.
  local libs
  libs="$(python3 - <<'EOF'
import pathlib, site
dirs = set()
for root in site.getsitepackages():
    for lib in pathlib.Path(root, "nvidia").glob("**/lib*.so*"):
        dirs.add(str(lib.parent))
print(":".join(sorted(dirs)))
EOF
)"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONPATH="$work/site:$repo/server:$repo/client:$repo"
  export PERF_ANALYZER="$work/perf_analyzer_wrapped" PYTHONUNBUFFERED=1
  local out="${OUT:-$work/out}"
  mkdir -p "$out"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  cd "$repo"
  set +e
  local name="gpu${TAG:+-$TAG}"
  # Wheels carried in .gpu-extra/ (e.g. py-spy for benchmarks.gpu_probe) go to their own folder.
  if compgen -G "$repo/.gpu-extra/*.whl" >/dev/null; then
    python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$work/extra" "$repo"/.gpu-extra/*.whl
    export PATH="$work/extra/bin:$PATH"
  fi
  # LIMIT_S=seconds ends the benchmark (SIGTERM: it stops its servers) so that a second run fits the call.
  # MODULE=benchmarks.gpu_probe runs that module instead (with ARGS, no --json).
  if [[ -n "${MODULE:-}" ]]; then
    ${LIMIT_S:+timeout -k 15 "$LIMIT_S"} python3 -m "$MODULE" "$@" 2>&1 | tee "$out/$name.log"
  else
    ${LIMIT_S:+timeout -k 15 "$LIMIT_S"} python3 -m benchmarks.gpu --json "$out/$name.json" "$@" 2>&1 | tee "$out/$name.log"
  fi
  local status=${PIPESTATUS[0]}
  set -e
  log "exit status $status (0 met, 3 missed, 2 cannot start)"
  return "$status"
}

case "${1:-}" in
  prepare) prepare ;;
  stage) stage ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 prepare|stage|run [benchmarks.gpu args]" >&2; exit 2 ;;
esac
