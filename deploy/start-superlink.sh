#!/bin/sh
# Start the consortium's SuperLink with TLS and SuperNode authentication (outside Docker).
#   CERTS         the folder of `medfl certs init` (default ./certs)
#   HOST, PORT    the SuperNodes' address: the Fleet API only (default 0.0.0.0:9091)
#   CONTROL_PORT  the operator's port, on 127.0.0.1 only: `flwr run`, `flwr supernode
#                 register` and the ServerApp (default 9093). Open-source Flower has no
#                 user authentication on it, so it is never reachable from the network.
#   STATE         a folder for the SuperLink's database and log (default ./superlink-state)
set -eu
CERTS="${CERTS:-./certs}"; STATE="${STATE:-./superlink-state}"
mkdir -p "$STATE"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 MEDFL_HOME="$STATE"
exec medfl superlink --fleet-address "${HOST:-0.0.0.0}:${PORT:-9091}" \
    --ssl-ca-certfile "$CERTS/ca.crt" --ssl-certfile "$CERTS/server.crt" \
    --ssl-keyfile "$CERTS/server.key" --enable-supernode-auth \
    --host 127.0.0.1 --port "${CONTROL_PORT:-9093}" \
    --database "$STATE/superlink.db" --log-file "$STATE/superlink.log" \
    --disable-runtime-dependency-installation
