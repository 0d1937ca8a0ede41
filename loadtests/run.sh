#!/usr/bin/env bash
# One command for a headless Locust load test of ortserve that fails when a latency target is missed.
#
#   loadtests/run.sh [--host TARGET] [--time 30s] [--users 8] [--shape steady] [...]
#
# Without --host it starts `ortserve serve` on the bundled demo repository (or --model-repository)
# on a free local port and stops it afterwards. It runs Locust headless with loadtests/locustfile.py,
# writes CSV and HTML reports, and prints the target table and the server-side breakdown.
# Exit code: 0 every target met; 3 a target missed; 2 the run could not start (server, models,
# targets file); otherwise Locust's own (1: failed requests of a model without targets).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"

usage() {
  cat <<'EOF'
Usage: loadtests/run.sh [options] [other Locust or load-test options...]

  --host TARGET            server to load: host:port, grpcs://host:port, dns:///name:port
                           (default: start a local `ortserve serve` on a free port)
  --model-repository DIR   repository of the local server (default: the bundled demo model)
  --time DURATION          run time, e.g. 30s, 2m (default 30s; the knee search ends by itself)
  --users N                users, the peak for step, spike and knee (default 8)
  --spawn-rate R           users started per second (default: all at once)
  --processes N            Locust processes: N workers under a master (-1: one per core; default 1)
  --shape NAME             steady, step, spike or knee (default steady)
  --targets FILE           latency targets (default loadtests/targets.toml)
  --out DIR                reports: DIR/ortserve_*.csv, DIR/report.html (default loadtests/reports)
  -h, --help               this help, then the load test's own options

Anything else goes to Locust as is (its options and the load test's, listed below).
EOF
  "$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv[1]); from loadtests.options import usage; print(); print(usage())' \
    "$(dirname "$here")" 2>/dev/null || true
}

host="" repository="" run_time="30s" users=8 spawn_rate="" processes=1 shape="" targets="" out="$here/reports"
extra=()
while (($#)); do
  case "$1" in
    --host) host="$2"; shift 2 ;;
    --model-repository) repository="$2"; shift 2 ;;
    --time) run_time="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    --spawn-rate) spawn_rate="$2"; shift 2 ;;
    --processes) processes="$2"; shift 2 ;;
    --shape) shape="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra+=("$@"); break ;;
    *) extra+=("$1"); shift ;;
  esac
done

if ! "$PYTHON" -c 'import locust, ortserve_client' 2>/dev/null; then
  echo "run.sh: needs Locust and the ortserve client: pip install ./client locust" \
       "(from the repository root; and '.[cpu]' for a local server)" >&2
  exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"

server_pid=""
# shellcheck disable=SC2317  # called by the EXIT trap
stop_server() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "$host" ]]; then
  log="$out/server.log"
  args=(serve --host 127.0.0.1 --grpc-port 0 --http-port -1)
  [[ -n "$repository" ]] && args+=(--model-repository "$repository")
  "$PYTHON" -m ortserve "${args[@]}" 2>"$log" >/dev/null &
  server_pid=$!
  for _ in $(seq 1 600); do
    grep -q "ortserve ready" "$log" && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "run.sh: the server exited before it was ready:" >&2; cat "$log" >&2; exit 2
    fi
    sleep 0.2
  done
  port="$(sed -n 's/.*ortserve listening: gRPC [^ ]*:\([0-9][0-9]*\),.*/\1/p' "$log" | head -n 1)"
  if [[ -z "$port" ]] || ! grep -q "ortserve ready" "$log"; then
    echo "run.sh: the server did not become ready in 120 s:" >&2; cat "$log" >&2; exit 2
  fi
  host="127.0.0.1:$port"
  echo "run.sh: started ortserve (pid $server_pid) on $host; its log: $log" >&2
fi

locust_args=(
  -f "$here/locustfile.py" --headless --only-summary
  -H "$host" -u "$users" -r "${spawn_rate:-$users}" -t "$run_time"
  --csv "$out/ortserve" --html "$out/report.html"
)
[[ "$processes" != 1 ]] && locust_args+=(--processes "$processes")
[[ -n "$shape" ]] && locust_args+=(--shape "$shape")
[[ -n "$targets" ]] && locust_args+=(--targets "$targets")

echo "run.sh: locust ${locust_args[*]} ${extra[*]}" >&2
status=0
"$PYTHON" -m locust "${locust_args[@]}" "${extra[@]}" || status=$?
echo "run.sh: reports in $out (ortserve_stats.csv, ortserve_targets.csv, ortserve_server.csv, report.html); exit code $status" >&2
exit "$status"
