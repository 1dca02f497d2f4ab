#!/usr/bin/env bash
# The project's test command (README): every unit, integration and doc test of the
# workspace, including the cross-process suites that spawn real helper processes.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace "$@"
