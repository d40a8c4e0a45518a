#!/bin/sh
# Start this hospital's SuperNode. Everything site-specific comes from the environment:
#   SITE               the site's name as registered (e.g. cleveland)
#   SUPERLINK          the SuperLink's address, host:port (TLS)
#   CA_CERT            the federation's CA certificate       (default /keys/ca.crt)
#   SITE_KEY           this site's private key (0600)         (default /keys/site.key)
#   DATA_PATH          this site's data: a folder (heart disease) or a CSV (default /data)
#   STATE_DIR          privacy ledger, DP state and the approved apps, writable (default /state)
#   RUNTIME_PORT       the SuperNode's Runtime API for its ClientApps, on 127.0.0.1 (default 9094;
#                      give each SuperNode sharing a host's network its own)
#   MAX_EPSILON, MIN_K, LIFETIME_EPSILON   this site's own privacy policy
#   MAX_DELTA          cap on a run's delta (default: unset, 1/(10 n) for n training rows,
#                      and for n test rows on the test rows' budget)
#   MAX_TEST_EPSILON   cap on a run's privacy.test-epsilon, the test rows' epsilon (default 1.0)
#   LIFETIME_TEST_EPSILON  the test rows' lifetime epsilon (default: LIFETIME_EPSILON; 0: none)
#   ALLOW_EXACT_EVALUATION  true to answer privacy.test-epsilon=0, exact test-set figures
#                      without DP (default false: refused)
#   ALLOW_PERSONAL_EVAL, ALLOW_AUDIT, ALLOW_EXACT_MOMENTS, ALLOW_SITE_SCALING
#                      true to allow that release outside DP (default false: refused):
#                      personalised evaluation, the membership audit on training rows,
#                      feature moments without noise, a site-local standardiser
#   TRUST_SECURE_AGGREGATION  true to join privacy.mode="distributed" runs, adding only a
#                      share of the DP-SGD noise and trusting SecAgg+ (default false: refused)
#   MAX_LOCAL_EPSILON  cap on a distributed run's unconditional epsilon, what this site's
#                      own noise share guarantees alone (default 10.0; 0: none)
# Only app code this site approved runs here (`medfl site approve`, deploy/README.md): a
# task for any other app bundle is refused before its code is unpacked.
# Stop it with Ctrl-C or `docker stop`; it exits 1 (Flower code 305) if the SuperLink
# refuses its key or it cannot verify the SuperLink's certificate.
set -eu
: "${SITE:?set SITE to this site's registered name}"
: "${SUPERLINK:?set SUPERLINK to host:port of the SuperLink}"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
exec medfl site supernode --state-dir "${STATE_DIR:-/state}" \
    --superlink "$SUPERLINK" \
    --root-certificates "${CA_CERT:-/keys/ca.crt}" \
    --auth-supernode-private-key "${SITE_KEY:-/keys/site.key}" \
    --port "${RUNTIME_PORT:-9094}" \
    --node-config "site='$SITE' data-path='${DATA_PATH:-/data}' site-dir='${STATE_DIR:-/state}' max-epsilon=${MAX_EPSILON:-3.0} min-k=${MIN_K:-10} lifetime-epsilon=${LIFETIME_EPSILON:-10.0} allow-personal-eval=${ALLOW_PERSONAL_EVAL:-false} allow-audit=${ALLOW_AUDIT:-false} allow-exact-moments=${ALLOW_EXACT_MOMENTS:-false} allow-site-scaling=${ALLOW_SITE_SCALING:-false} max-test-epsilon=${MAX_TEST_EPSILON:-1.0} lifetime-test-epsilon=${LIFETIME_TEST_EPSILON:-${LIFETIME_EPSILON:-10.0}} allow-exact-evaluation=${ALLOW_EXACT_EVALUATION:-false} trust-secure-aggregation=${TRUST_SECURE_AGGREGATION:-false} max-local-epsilon=${MAX_LOCAL_EPSILON:-10.0}${MAX_DELTA:+ max-delta=$MAX_DELTA}"
