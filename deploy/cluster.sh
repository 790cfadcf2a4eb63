#!/usr/bin/env bash
# A local Partner Hub cluster shaped like production: every service as its own
# processes, two replicas each, on the local PostgreSQL (the database is
# created when missing), each replica finding the others by address. Prints
# every process's address, metrics endpoint, pid and log; Ctrl-C stops them all.
#
#   deploy/cluster.sh                          # ports 21051-21056, database partnerhub_cluster
#   deploy/cluster.sh --replicas 3 --base-port 0 --database-url postgres://postgres@127.0.0.1:5432/mine
#
# Files go to target/cluster (--dir): partnerhub.toml (for `partnerhub --config
# target/cluster/partnerhub.toml token …`), one log per process, and
# cluster.json once every process serves. Other PARTNERHUB__… variables pass
# through to every process, e.g. PARTNERHUB__TELEMETRY__OTLP_ENDPOINT.
#
# PARTNERHUB_BIN: a partnerhub binary to use instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PARTNERHUB_BIN:-}" ]; then
  cargo build --quiet -p partnerhub --bin partnerhub
  PARTNERHUB_BIN=target/debug/partnerhub
fi
exec "$PARTNERHUB_BIN" cluster "$@"
