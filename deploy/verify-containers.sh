#!/usr/bin/env bash
# Build MedFL's three images and run a whole containerised federation with them, end to end:
#
#   1. a base image: BASE_IMAGE if set; else python:3.11-slim if present or pullable; else one
#      bootstrapped from Debian's packages (debootstrap, then `docker import`; needs root);
#   2. the SuperLink, SuperNode and API images (deploy/Dockerfile.*). Where a container cannot
#      reach a package index itself, the host's pip downloads every wheel the images need
#      into a wheelhouse that the builds install from, over loopback only;
#   3. the consortium's certificates and keys with `medfl certs`, the app signed and
#      approved at each site, each site's own heart-disease file (deploy/compose-init.sh);
#   4. the SuperLink (TLS, registered SuperNodes only), then each site's key registered
#      (deploy/compose-register.sh), then three site SuperNodes, each with its own key
#      (read-only, 0600), data volume (read-only) and state volume;
#   5. a federated run to the end (`flwr run`), restarting one site's container in its
#      second round: that site is dropped from the round and rejoins a later one;
#   6. the run's bundle served from the API image, and a prediction from it;
#   7. every container stopped and removed, also on failure or Ctrl-C.
#
# Every container runs as uid 10001 with a read-only root filesystem, no capabilities, no
# new privileges and memory/CPU limits, on the host's network, bound to 127.0.0.1 only: no
# traffic goes to any other address. It needs a Docker engine (`docker info` answers).
#
#   deploy/verify-containers.sh            # or: make containers
#
# Settings (environment): WORK (a folder for certificates, site volumes, logs and the run;
# default a new one under /tmp, kept afterwards), BASE_IMAGE, TORCH_INDEX_URL,
# TORCH_REQUIREMENT, PYTHON (the host's Python for the wheelhouse), FLEET_PORT (29091),
# CONTROL_PORT (29093), API_PORT (28000), RUNTIME_PORT_BASE (29094: one port per site),
# WHEEL_PORT (29090: the wheelhouse, where one is needed),
# ROUNDS (4). It prints each step with the seconds since the start, and at the end the
# image sizes and timings; $WORK/summary.json holds them too.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/medfl-containers.XXXXXX)}
FLEET_PORT=${FLEET_PORT:-29091}
CONTROL_PORT=${CONTROL_PORT:-29093}
API_PORT=${API_PORT:-28000}
RUNTIME_PORT_BASE=${RUNTIME_PORT_BASE:-29094}
ROUNDS=${ROUNDS:-4}
PYTHON=${PYTHON:-python3}
SITES=(cleveland hungarian va)
RESTARTED=va
RUN_NAME=containers
LABEL=medfl.verify-containers
PREFIX=medfl-verify
IMAGES=(superlink supernode api)
T0=$(date +%s)
WHEEL_SERVER=""
declare -A SECONDS_OF=()

log() { printf '[%4d s] %s\n' $(( $(date +%s) - T0 )) "$*"; }
die() { log "FAILED: $*" >&2; exit 1; }
timed() {  # timed NAME command...: run it, keep its duration in seconds, return its status
    # (explicitly: called on the left of `||`, a function runs without `set -e`)
    local name=$1 t rc=0; shift; t=$(date +%s)
    "$@" || rc=$?
    SECONDS_OF[$name]=$(( $(date +%s) - t ))
    return "$rc"
}

ours() { docker ps -aq --filter "label=$LABEL"; }
cleanup() {
    set +e
    [ -n "$WHEEL_SERVER" ] && kill "$WHEEL_SERVER" 2>/dev/null
    local ids
    ids=$(ours)
    [ -n "$ids" ] && docker rm -f $ids >/dev/null 2>&1
    [ -f "$WORK/api.env" ] && rm -f "$WORK/api.env"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The hardening every long-running container gets (the one-off tools get the same, less the
# limits). HOST networking, and every service binds 127.0.0.1.
HARDENED=(--network host --read-only --tmpfs /tmp:rw,nosuid,nodev,size=1g
          --cap-drop ALL --security-opt no-new-privileges --label "$LABEL")

wait_healthy() {  # wait_healthy CONTAINER SECONDS
    local name=$1 deadline=$(( $(date +%s) + $2 )) state
    while :; do
        state=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$name" \
            2>/dev/null || echo gone)
        [ "$state" = "running healthy" ] && return 0
        case $state in gone|exited*|dead*)
            die "container $name stopped ($state): $(docker logs --tail 20 "$name" 2>&1)";;
        esac
        [ "$(date +%s)" -gt "$deadline" ] && die "container $name not healthy within $2 s" \
            "(health: $state): $(docker logs --tail 20 "$name" 2>&1)"
        sleep 2
    done
}

# --- 0. the engine ---------------------------------------------------------------------
docker info >/dev/null 2>&1 || die "no Docker engine answers ('docker info'). As root on " \
    "Debian: apt-get install docker.io, then start dockerd"
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
log "work folder: $WORK"
[ -z "$(ours)" ] || die "containers labelled $LABEL are still there (docker rm -f them)"

# --- 1. the base image -----------------------------------------------------------------
build_base() {
    local rootfs="$WORK/rootfs" mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    command -v debootstrap >/dev/null || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } \
        || die "no registry answers and debootstrap is missing: install it, or set BASE_IMAGE"
    [ "$(id -u)" = 0 ] || die "bootstrapping a base image needs root; or set BASE_IMAGE"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed: see $WORK/debootstrap.log"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}
if [ -z "${BASE_IMAGE:-}" ]; then
    if docker image inspect python:3.11-slim >/dev/null 2>&1 \
            || timeout 120 docker pull -q python:3.11-slim >/dev/null 2>&1; then
        BASE_IMAGE=python:3.11-slim
    else
        BASE_IMAGE=medfl-base:bookworm
        if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
            log "no registry answers; base image $BASE_IMAGE is already here"
        else
            log "no registry answers: bootstrapping $BASE_IMAGE from Debian's packages"
            timed base build_base
        fi
    fi
fi
log "base image: $BASE_IMAGE"

# --- 2. the three images ---------------------------------------------------------------
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
[ -n "${TORCH_INDEX_URL:-}" ] && BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
# a mirror of yours passes through (never one with a password in it: build arguments are
# recorded in the image's history)
for var in PIP_INDEX_URL PIP_TRUSTED_HOST; do
    [ -n "${!var:-}" ] && BUILD_ARGS+=(--build-arg "$var=${!var}")
done
if docker run --rm --network host "$BASE_IMAGE" python3 -c \
        "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=15)" \
        >/dev/null 2>&1; then
    log "containers reach PyPI: the images install from the package indexes"
    [ -n "${TORCH_REQUIREMENT:-}" ] && BUILD_ARGS+=(--build-arg "TORCH_REQUIREMENT=$TORCH_REQUIREMENT")
else
    # The host's pip (with its own index, certificates and mirrors) downloads every wheel;
    # the builds install only from that wheelhouse, served on 127.0.0.1.
    image_py=$(docker run --rm --network none "$BASE_IMAGE" python3 -c \
        'import sys; print("%d.%d" % sys.version_info[:2])') \
        || die "$BASE_IMAGE cannot run python3"
    host_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
        || die "PYTHON=$PYTHON does not run"
    [ "$image_py" = "$host_py" ] || die "a container cannot reach PyPI, and the host's " \
        "Python ($PYTHON, $host_py) differs from the image's ($image_py): set PYTHON to a " \
        "Python $image_py with pip"
    if [ -z "${TORCH_REQUIREMENT:-}" ]; then
        # the newest CPU-only torch the host's pip can find (a CUDA build is gigabytes)
        cpu=$("$PYTHON" -m pip index versions torch 2>/dev/null \
            | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' \
            | grep '+cpu$' | head -1 || true)
        [ -n "$cpu" ] || die "a container cannot reach PyPI and the host's pip finds no " \
            "CPU-only torch: set TORCH_REQUIREMENT (e.g. torch==2.13.0+cpu) or TORCH_INDEX_URL"
        TORCH_REQUIREMENT="torch==$cpu"
    fi
    log "containers cannot reach PyPI: the host's pip fills a wheelhouse ($TORCH_REQUIREMENT)"
    mkdir -p "$WORK/wheelhouse"
    timed wheelhouse "$PYTHON" -m pip download --quiet --dest "$WORK/wheelhouse" \
        "$TORCH_REQUIREMENT" setuptools wheel "$ROOT" > "$WORK/wheelhouse.log" 2>&1 \
        || die "pip download failed: see $WORK/wheelhouse.log"
    # a fixed port: the URL is a build argument, so a new one each time would defeat the
    # layer cache
    wheel_port=${WHEEL_PORT:-29090}
    "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK/wheelhouse" "$wheel_port" \
        > "$WORK/wheelhouse-server.log" 2>&1 &
    WHEEL_SERVER=$!
    # ours, answering, and listing the wheels (not something else on that port)
    torch_wheel=$(cd "$WORK/wheelhouse" && ls torch-*.whl | head -1)
    serving=no
    for _ in $(seq 30); do
        kill -0 "$WHEEL_SERVER" 2>/dev/null || break
        "$PYTHON" -c "import sys, urllib.request; sys.exit(sys.argv[2] not in urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())" \
            "http://127.0.0.1:$wheel_port/" "$torch_wheel" 2>/dev/null && { serving=yes; break; }
        sleep 0.5
    done
    [ "$serving" = yes ] || die "the wheelhouse server did not serve on 127.0.0.1:$wheel_port" \
        "(WHEEL_PORT): $(tail -3 "$WORK/wheelhouse-server.log")"
    BUILD_ARGS+=(--build-arg "TORCH_REQUIREMENT=$TORCH_REQUIREMENT" --build-arg PIP_NO_INDEX=1
                 --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$wheel_port/")
fi
for image in "${IMAGES[@]}"; do
    log "building medfl-$image"
    timed "build-$image" docker build --network host --quiet "${BUILD_ARGS[@]}" \
        -f "$ROOT/deploy/Dockerfile.$image" -t "medfl-$image" "$ROOT" \
        > "$WORK/build-$image.log" 2>&1 || die "building medfl-$image failed: $(tail -20 "$WORK/build-$image.log")"
done
[ -n "$WHEEL_SERVER" ] && { kill "$WHEEL_SERVER"; WHEEL_SERVER=""; }
for image in "${IMAGES[@]}"; do
    user=$(docker image inspect -f '{{.Config.User}}' "medfl-$image")
    [ "$user" = medfl ] || die "medfl-$image runs as '$user', not the medfl user"
    # as root, so that a file the service user could not read is searched too
    keys=$(docker run --rm --no-healthcheck --network none --user root "medfl-$image" sh -c \
        "grep -rlIE -- '-----BEGIN [A-Z ]*PRIVATE KEY-----' /app /etc /state /tmp /root /home || true") \
        || die "could not search medfl-$image for keys"
    [ -z "$keys" ] || die "medfl-$image carries a private key: $keys"
done
log "the images run as uid 10001 (medfl) and carry no private key"

# --- 3. certificates, keys, the approved app, each site's data -------------------------
log "certificates, site keys, the signed app and each site's approval (medfl certs, medfl app)"
mkdir -p "$WORK/certs" "$WORK/superlink/tls" "$WORK/superlink/state"
VOLUMES=(-v "$WORK/certs:/certs" -v "$WORK/superlink/tls:/superlink-tls")
for site in "${SITES[@]}"; do
    mkdir -p "$WORK/sites/$site"/{keys,data,state}
    VOLUMES+=(-v "$WORK/sites/$site/keys:/site-keys/$site" -v "$WORK/sites/$site/data:/site-data/$site"
              -v "$WORK/sites/$site/state:/site-state/$site")
done
timed init docker run --rm --no-healthcheck --user root --network none --read-only --tmpfs /tmp \
    --label "$LABEL" \
    -e "CONTROL_ADDRESS=127.0.0.1:$CONTROL_PORT" -e "STATE_OWNER=10001" "${VOLUMES[@]}" \
    -v "$WORK/superlink/state:/superlink-state" medfl-superlink sh deploy/compose-init.sh \
    > "$WORK/init.log" 2>&1 || die "set-up failed: $(tail -20 "$WORK/init.log")"

# --- 4. the SuperLink, the sites' registration, three SuperNodes -------------------------
log "starting the SuperLink (Fleet API 127.0.0.1:$FLEET_PORT, Control API 127.0.0.1:$CONTROL_PORT)"
docker run -d --name "$PREFIX-superlink" "${HARDENED[@]}" --memory 3g --cpus 2 --pids-limit 512 \
    -e HOST=127.0.0.1 -e "PORT=$FLEET_PORT" -e "CONTROL_PORT=$CONTROL_PORT" \
    -v "$WORK/superlink/tls:/certs:ro" -v "$WORK/superlink/state:/state" medfl-superlink >/dev/null \
    || die "the SuperLink container did not start"
timed superlink-healthy wait_healthy "$PREFIX-superlink" 180

# the operator's flwr CLI: the SuperLink image as a one-off (no health check of its own)
CONTROL=(docker run --rm --name "$PREFIX-control" --no-healthcheck "${HARDENED[@]}"
         -e FLWR_HOME=/certs/flwr-home
         -v "$WORK/certs:/certs" medfl-superlink)
log "registering the sites' public keys"
timed register "${CONTROL[@]}" sh deploy/compose-register.sh > "$WORK/register.log" 2>&1 \
    || die "registration failed: $(tail -20 "$WORK/register.log")"

start_site() {  # start_site SITE INDEX
    docker run -d --name "$PREFIX-$1" "${HARDENED[@]}" --memory 4g --cpus 1 --pids-limit 512 \
        --restart unless-stopped -e "SITE=$1" -e "SUPERLINK=127.0.0.1:$FLEET_PORT" \
        -e "RUNTIME_PORT=$(( RUNTIME_PORT_BASE + $2 ))" \
        -v "$WORK/sites/$1/keys:/keys:ro" -v "$WORK/sites/$1/data:/data:ro" \
        -v "$WORK/sites/$1/state:/state" medfl-supernode >/dev/null
}
log "starting a SuperNode per site: ${SITES[*]}"
for i in "${!SITES[@]}"; do
    start_site "${SITES[$i]}" "$i" || die "${SITES[$i]}'s SuperNode container did not start"
done
for site in "${SITES[@]}"; do timed "healthy-$site" wait_healthy "$PREFIX-$site" 180; done

# --- 5. a federated run, one site restarted in round 2 -----------------------------------
RUN_CONFIG="num-server-rounds=$ROUNDS run-name='$RUN_NAME' strategy.min-nodes=${#SITES[@]} \
strategy.min-round-nodes=1 strategy.round-timeout=90.0 evaluation.personal-epochs=0 \
privacy.audit=false privacy.accountant='rdp'"
log "flwr run: $RUN_CONFIG"
run_start=$(date +%s)
"${CONTROL[@]}" flwr run . medfl --stream --run-config "$RUN_CONFIG" > "$WORK/flwr-run.log" 2>&1 &
run_pid=$!
rounds() { docker exec "$PREFIX-superlink" sh -c \
    "cat /state/outputs/$RUN_NAME/rounds.jsonl 2>/dev/null" | grep -c . || true; }
deadline=$(( $(date +%s) + 900 ))
until [ "$(rounds)" -ge 1 ]; do
    kill -0 "$run_pid" 2>/dev/null || die "the run ended before round 1: $(tail -30 "$WORK/flwr-run.log")"
    [ "$(date +%s)" -lt "$deadline" ] || die "round 1 not done within 900 s"
    sleep 2
done
done_before=$(rounds)
log "round $done_before done; restarting $RESTARTED's container (docker restart) during round $(( done_before + 1 ))"
docker restart --time 10 "$PREFIX-$RESTARTED" >/dev/null || die "docker restart failed"
wait "$run_pid" || die "flwr run failed: $(tail -30 "$WORK/flwr-run.log")"
SECONDS_OF[run]=$(( $(date +%s) - run_start ))
docker exec "$PREFIX-superlink" cat "/state/outputs/$RUN_NAME/rounds.jsonl" > "$WORK/rounds.jsonl" \
    || die "no rounds.jsonl in the run folder"
restarts=$(docker inspect -f '{{.RestartCount}}' "$PREFIX-$RESTARTED")
log "run done in ${SECONDS_OF[run]} s; $RESTARTED's container restarted by its policy $restarts more time(s)"
"$PYTHON" - "$WORK/rounds.jsonl" "$RESTARTED" "$ROUNDS" "$done_before" "${SITES[@]}" <<'PY' \
    || die "the rounds are not as expected"
import json, sys
path, restarted, n, before, sites = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                     int(sys.argv[4]), sys.argv[5:])
rounds = [json.loads(line) for line in open(path)]
for r in rounds:
    problems = {p["site"]: p["status"] for p in r.get("train_problems", [])}
    print(f"  round {r['round']}: trained {sorted(r['train'])}"
          + (f", dropped {problems}" if problems else ""))
assert [r["round"] for r in rounds] == list(range(1, n + 1)), "not every round ran"
assert sorted(rounds[0]["train"]) == sorted(sites), "round 1 lacks a site"
# the round running at the restart (the one after the last recorded round)
during = rounds[before]
dropped = {p["site"] for p in during.get("train_problems", [])}
assert restarted in dropped and restarted not in during["train"], \
    f"{restarted} was not dropped from round {during['round']}, the one it was restarted in"
back = [r["round"] for r in rounds[before + 1:] if restarted in r["train"]]
assert back, f"{restarted} did not rejoin a later round"
print(f"  {restarted}: dropped from round {during['round']}, back in round(s) {back}")
PY

# The restarted site's ledger, read from its state volume: one training entry per round it
# trained, its run's epsilon growing across the restart (the accountant continued)
docker run --rm --no-healthcheck --network none -v "$WORK/sites/$RESTARTED/state:/state:ro" \
    medfl-supernode cat /state/privacy-ledger.json > "$WORK/$RESTARTED-ledger.json"
"$PYTHON" - "$WORK/$RESTARTED-ledger.json" "$WORK/rounds.jsonl" "$RESTARTED" <<'PY' \
    || die "$RESTARTED's privacy ledger does not continue across its restart"
import json, sys
ledger, rounds, site = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
trained = [r["round"] for r in map(json.loads, open(rounds)) if site in r["train"]]
train = [e for e in ledger["entries"] if e["budget"] == "train" and e["round"] >= 1]
# every round it trained in was spent in its ledger (a round it reserved and was then
# stopped in may be there too: reserved, never refunded), epsilon growing throughout
assert set(trained) <= {e["round"] for e in train}, ([e["round"] for e in train], trained)
eps = [e["epsilon_run"] for e in train]
assert all(a < b for a, b in zip(eps, eps[1:])), eps
print(f"  {site}'s ledger: rounds {[e['round'] for e in train]}, run epsilon "
      + " -> ".join(f"{e:.2f}" for e in eps))
PY

# --- 6. the bundle served from the API image ---------------------------------------------
log "serving the run's bundle from medfl-api on 127.0.0.1:$API_PORT"
API_KEY=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')
# the key in a 0600 file, not on a command line that `ps` shows
(umask 077 && printf 'MEDFL_API_KEY=%s\n' "$API_KEY" > "$WORK/api.env")
docker run -d --name "$PREFIX-api" "${HARDENED[@]}" --memory 2g --cpus 1 --pids-limit 256 \
    -e HOST=127.0.0.1 -e "PORT=$API_PORT" --env-file "$WORK/api.env" \
    -v "$WORK/superlink/state/outputs/$RUN_NAME:/model:ro" medfl-api >/dev/null \
    || die "the API container did not start"
timed api-healthy wait_healthy "$PREFIX-api" 180
"$PYTHON" - "$API_PORT" "$WORK/api.env" > "$WORK/predict.json" <<'PY' || die "prediction failed"
import json, sys, urllib.error, urllib.request
port, key = sys.argv[1], open(sys.argv[2]).read().strip().split("=", 1)[1]
record = {"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
          "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}
def post(headers):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", method="POST",
                                 data=json.dumps({"records": [record]}).encode(),
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, None
status, _ = post({})
assert status == 401, f"a request without the key got {status}, not 401"
status, body = post({"X-API-Key": key})
assert status == 200, f"/predict answered {status}"
probabilities = body["predictions"][0]["probabilities"]
assert abs(sum(probabilities.values()) - 1) < 1e-6, probabilities
print(json.dumps(body))
PY
log "prediction: $(cat "$WORK/predict.json")"

# --- 7. stop everything --------------------------------------------------------------------
log "stopping every container"
timed stop docker stop --time 20 $(ours) >/dev/null || die "docker stop failed"
docker rm $(ours) >/dev/null || die "docker rm failed"
[ -z "$(docker ps -q --filter "label=$LABEL")" ] || die "a container is still running"
log "no container left running"

# --- the figures ---------------------------------------------------------------------------
SECONDS_OF[total]=$(( $(date +%s) - T0 ))
{
    for image in "${IMAGES[@]}"; do
        echo "image medfl-$image $(docker image inspect -f '{{.Size}}' "medfl-$image")"
    done
    echo "image base $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")"
    for name in "${!SECONDS_OF[@]}"; do echo "seconds $name ${SECONDS_OF[$name]}"; done
    echo "restarts $RESTARTED $restarts"
} | "$PYTHON" -c '
import json, sys
out = {"images_bytes": {}, "seconds": {}, "policy_restarts": {}}
for line in sys.stdin:
    kind, name, value = line.split()
    key = {"image": "images_bytes", "seconds": "seconds", "restarts": "policy_restarts"}[kind]
    out[key][name] = int(value)
for name, size in sorted(out["images_bytes"].items()):
    print(f"  {name}: {size / 1e9:.2f} GB")
for name, s in sorted(out["seconds"].items()):
    print(f"  {name}: {s} s")
json.dump(out, open(sys.argv[1], "w"), indent=1)
' "$WORK/summary.json"
log "passed: images built, federation run with $RESTARTED restarted, prediction served; $WORK/summary.json"
