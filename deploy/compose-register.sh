#!/bin/sh
# Run in the `control` container (on the SuperLink's loopback) once the SuperLink is
# up: register each site's public key. Only registered keys can connect;
# `flwr supernode unregister <node-id> medfl` revokes one.
set -eu
for site in cleveland hungarian va; do
    flwr supernode register "/certs/sites/$site.pub" medfl
done
flwr supernode list medfl
