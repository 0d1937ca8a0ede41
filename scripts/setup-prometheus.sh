#!/usr/bin/env bash
# Install the Prometheus server and promtool (Debian package `prometheus`) for the tests, and print
# the directory holding both binaries as the last line of stdout.
#
# The Debian package would start a service under systemd; in a container there is none, and the
# tests never use it: they run their own `prometheus --web.listen-address=127.0.0.1:PORT
# --storage.tsdb.path=<tmp>` (see DESIGN.md, "Real components for tests").
#
# Steps:
#   1. Nothing to do when `prometheus` and `promtool` are already on PATH (a second run takes
#      well under a second and needs no network).
#   2. Otherwise apt-get install --no-install-recommends prometheus (apt-get update first only
#      when the package lists do not know the package; one retry after an update).
#   3. Smoke-test both binaries (--version) and print their directory.
#
# Everything except the final path goes to stderr, so `dir=$(scripts/setup-prometheus.sh | tail -n1)`
# works in CI.
set -euo pipefail

log() { printf 'setup-prometheus: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  command -v apt-get >/dev/null || die "prometheus/promtool are missing and apt-get is not available"
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "prometheus is missing and neither root nor sudo is available"
    sudo=(sudo)
  fi
  apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0)
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    log "apt-get update (package lists do not know prometheus)"
    "${apt[@]}" update >&2
  fi
  log "installing prometheus (server + promtool)"
  # policy-rc.d 101: never start the packaged service (no init system here; the tests run their own).
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy && $(id -u) -eq 0 ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created_policy=1
  fi
  if ! "${apt[@]}" install --no-install-recommends prometheus >&2; then
    log "apt-get install failed; updating package lists and retrying once"
    "${apt[@]}" update >&2
    "${apt[@]}" install --no-install-recommends prometheus >&2
  fi
  [[ $created_policy -eq 1 ]] && rm -f "$policy"
fi

for tool in prometheus promtool; do
  "$tool" --version >/dev/null 2>&1 || die "$tool --version failed"
done
log "ok: $(prometheus --version 2>&1 | head -n1)"
dirname "$(command -v promtool)"
