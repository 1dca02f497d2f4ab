#!/usr/bin/env bash
# The project's test command (README): every unit, integration and doc test of the
# workspace, including the cross-process suites that spawn real helper processes; then the
# library with its optional observability features (metrics, tracing) built in.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace "$@"
cargo test -p shmrpc --features metrics,tracing --test metrics --test rpc_basic "$@"
