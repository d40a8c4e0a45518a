#!/bin/sh
# Run once in the compose file's `operator` container: the CA and the SuperLink's
# certificate (valid for the service name `superlink`), one key pair per site, each
# site's private key and the CA certificate into that site's key volume (readable by the
# SuperNode's user only), each site's own heart-disease file into its data volume, the
# app bundle signed with the consortium's app-signing key and approved in each site's
# state volume (in a real deployment each hospital approves it itself), and the CLI's
# connection to the SuperLink's Control API (loopback, in the `control` service).
set -eu
medfl certs init /certs --san superlink --san localhost --san 127.0.0.1
medfl certs app-key /certs
mkdir -p /certs/app
medfl app build /app --out /certs/app/medfl-app.fab --sign-key /certs/app-signing.key
for site in cleveland hungarian va; do
    medfl site approve /certs/app/medfl-app.fab --state-dir "/site-state/$site" \
        --publisher-key /certs/app-signing.pub --yes
    chown -R 10001 "/site-state/$site"
    medfl certs add-site /certs "$site"
    install -m 0600 -o 10001 "/certs/sites/$site.key" "/site-keys/$site/site.key"
    install -m 0644 /certs/ca.crt "/site-keys/$site/ca.crt"
    python - "$site" <<'PY'
import shutil, sys
from medfl.data.heart import data_dir, site_file_name
site = sys.argv[1]
shutil.copy(data_dir() / site_file_name(site), f"/site-data/{site}/{site_file_name(site)}")
PY
done
chown 10001 /certs/server.key
mkdir -p /certs/flwr-home
cat > /certs/flwr-home/config.toml <<TOML
[superlink]
default = "medfl"

[superlink.medfl]
address = "127.0.0.1:9093"
root-certificates = "/certs/ca.crt"
TOML
