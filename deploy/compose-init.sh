#!/bin/sh
# Run once, as root, in the compose file's `operator` container (deploy/verify-containers.sh
# runs it the same way, with each volume a folder). It writes:
#   /certs              the operator's: CA (ca.key stays root's, 0600), the SuperLink's
#                       certificate, each site's key pair, the app-signing key, the signed
#                       app, and the flwr CLI's connection (flwr-home/config.toml)
#   /superlink-tls      only what the SuperLink reads: ca.crt, server.crt, server.key (0600)
#   /site-keys/<site>   that site's private key (0600) and ca.crt
#   /site-data/<site>   that site's own heart-disease file
#   /site-state/<site>  that site's approval of the signed app (in a real deployment each
#                       hospital approves it itself: deploy/README.md)
# Private keys and the state folders belong to the services' user (STATE_OWNER, uid 10001).
# CONTROL_ADDRESS is where the CLI reaches the SuperLink's Control API (default
# 127.0.0.1:9093, the SuperLink container's loopback).
set -eu
OWNER="${STATE_OWNER:-10001}"
medfl certs init /certs --san superlink --san localhost --san 127.0.0.1
medfl certs app-key /certs
mkdir -p /certs/app
medfl app build /app --out /certs/app/medfl-app.fab --sign-key /certs/app-signing.key
for site in cleveland hungarian va; do
    medfl site approve /certs/app/medfl-app.fab --state-dir "/site-state/$site" \
        --publisher-key /certs/app-signing.pub --yes
    chown -R "$OWNER" "/site-state/$site"
    chmod 0700 "/site-state/$site"
    medfl certs add-site /certs "$site"
    install -m 0600 -o "$OWNER" "/certs/sites/$site.key" "/site-keys/$site/site.key"
    install -m 0644 /certs/ca.crt "/site-keys/$site/ca.crt"
    python - "$site" <<'PY'
import shutil, sys
from medfl.data.heart import data_dir, site_file_name
site = sys.argv[1]
shutil.copy(data_dir() / site_file_name(site), f"/site-data/{site}/{site_file_name(site)}")
PY
    chmod 0644 "/site-data/$site"/*
done
install -m 0644 /certs/ca.crt /certs/server.crt /superlink-tls/
install -m 0600 -o "$OWNER" /certs/server.key /superlink-tls/server.key
if [ -d /superlink-state ]; then
    chown "$OWNER" /superlink-state && chmod 0700 /superlink-state
fi
mkdir -p /certs/flwr-home
cat > /certs/flwr-home/config.toml <<TOML
[superlink]
default = "medfl"

[superlink.medfl]
address = "${CONTROL_ADDRESS:-127.0.0.1:9093}"
root-certificates = "/certs/ca.crt"
TOML
# the CLI (the `control` service) runs as the services' user: its own folder, the public
# certificate and the sites' public keys; never the CA or signing keys
chown -R "$OWNER" /certs/flwr-home
