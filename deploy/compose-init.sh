#!/bin/sh
# Run once in the compose file's `operator` container: the CA and the SuperLink's
# certificate (valid for the service name `superlink`), one key pair per site, each
# site's private key and the CA certificate into that site's key volume (readable by the
# SuperNode's user only), each site's own heart-disease file into its data volume, and the
# CLI's connection to the SuperLink.
set -eu
medfl certs init /certs --san superlink --san localhost --san 127.0.0.1
for site in cleveland hungarian va; do
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
address = "superlink:9091"
root-certificates = "/certs/ca.crt"
TOML
