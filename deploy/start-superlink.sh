#!/bin/sh
# Start the consortium's SuperLink with TLS and SuperNode authentication (outside Docker).
#   CERTS   the folder of `medfl certs init` (default ./certs)
#   PORT    the one port for SuperNodes, the flwr CLI and the ServerApp (default 9091)
#   HOST    the address to listen on (default 0.0.0.0)
#   STATE   a folder for the SuperLink's database and log (default ./superlink-state)
set -eu
CERTS="${CERTS:-./certs}"; STATE="${STATE:-./superlink-state}"
mkdir -p "$STATE"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 MEDFL_HOME="$STATE"
exec flower-superlink \
    --ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.crt" \
    --ssl-keyfile "$CERTS/server.key" --enable-supernode-auth \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-9091}" \
    --database "$STATE/superlink.db" --log-file "$STATE/superlink.log" \
    --disable-runtime-dependency-installation
