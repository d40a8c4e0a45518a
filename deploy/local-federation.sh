#!/usr/bin/env bash
# The four heart-disease hospitals as a real deployment on this machine: a TLS SuperLink
# with SuperNode authentication, one authenticated SuperNode per hospital (each reading
# only its own data folder), `flwr run`, a run folder, and every process stopped after,
# also on failure or Ctrl-C. Sets up .venv on first use (as `make demo` does).
#   deploy/local-federation.sh [--workdir DIR] [--site NAME ...] [--run-config "k=v ..."]
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory install >/dev/null
exec .venv/bin/medfl local-federation "$@"
