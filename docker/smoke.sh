#!/usr/bin/env bash
# `make image-smoke` (`docker/smoke.sh [--gpu]`): build the image and run it as an operator would.
#
# Builds docker/Dockerfile.cpu (or, with --gpu, Dockerfile.gpu: built and sized only, running it needs a GPU)
# with whichever engine is present: docker where a daemon answers, else podman with the settings that work on
# machines without a registry or systemd (../shared/notes/containers.md): runc, a raised-ulimit-free
# containers.conf, a stand-in base image made with debootstrap when the registry's is absent, and pip's local
# indexes mounted into the build. Then runs the image twice, with the model baked in and with a model directory
# mounted read-only into an image built without one, each on a read-only root with only /tmp writable, and checks:
# /readyz within the healthcheck's start period, a /predict on a photo, /metrics, the image's HEALTHCHECK command,
# the user (10001), and `stop` exiting 0 within the grace period; with the baked model, Prometheus (Debian's
# package, docker/prometheus/prometheus.yml aimed at localhost) scrapes it and answers a query of the request rate.
# Prints the image sizes and the times. Not part of `make test`: it needs an engine and about 15 minutes.
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script too

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${SMOKE_WORK:-/var/tmp/fer-smoke}
PORT=${SMOKE_PORT:-18000}
GRACE=30               # seconds `stop` waits before killing; the service drains within FER_GRACEFUL_TIMEOUT_S
START_PERIOD=60        # the Dockerfile's HEALTHCHECK --start-period
VARIANT=cpu
[[ "${1:-}" == "--gpu" ]] && VARIANT=gpu
TAG=localhost/fer-explain:$VARIANT
PY=${SMOKE_PYTHON:-$ROOT/.venv/bin/python}
mkdir -p "$WORK"

log() { printf '%s  %s\n' "$(date +%T)" "$*"; }
fail() { log "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
since() { printf '%.1f' "$(echo "$(now) - $1" | bc)"; }

# --- the engine --------------------------------------------------------------------------------------------
BUILD_OPTS=() RUN_OPTS=() BUILD_ARGS=()
if docker info >/dev/null 2>&1; then
    ENGINE=docker
elif command -v podman >/dev/null; then
    ENGINE=podman
    printf '[containers]\ndefault_ulimits = []\n' > "$WORK/containers.conf"  # raising RLIMIT_NOFILE is refused here
    export CONTAINERS_CONF=$WORK/containers.conf
    RUN_OPTS=(--runtime runc)                        # crun fails on these hosts' hybrid cgroups
    BUILD_OPTS=(--isolation chroot --format docker)  # the OCI format drops HEALTHCHECK
else
    fail "no container engine: install docker, or podman and runc"
fi
log "engine: $ENGINE ($($ENGINE --version))"

base_image() {
    # The registry's python:3.11-slim-bookworm, or a stand-in made from Debian's packages where it cannot be pulled.
    local image=python:3.11-slim-bookworm
    if $ENGINE image inspect "$image" >/dev/null 2>&1 || $ENGINE pull -q "docker.io/library/$image" >/dev/null 2>&1; then
        echo "$image"; return
    fi
    image=localhost/python:3.11-slim-bookworm
    if ! $ENGINE image inspect "$image" >/dev/null 2>&1; then
        log "no registry: making $image with debootstrap (minutes)" >&2
        local rootfs=$WORK/rootfs mirror
        # the Debian mirror this machine's apt sources name (not a third-party repository's, nor security's)
        mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
                 | head -1 | tr -d ' ' || true)
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm \
            "$rootfs" "${mirror:-http://deb.debian.org/debian}" >"$WORK/debootstrap.log" 2>&1
        cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
        chroot "$rootfs" apt-get install -y --no-install-recommends python-is-python3 >>"$WORK/debootstrap.log" 2>&1
        chroot "$rootfs" apt-get clean
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"  # pip needs the host's CAs
        tar --numeric-owner -C "$rootfs" -cf "$WORK/base.tar" .
        $ENGINE import --change 'ENV LANG=C.UTF-8' "$WORK/base.tar" "$image" >/dev/null
        rm -rf "$rootfs" "$WORK/base.tar"
    fi
    echo "$image"
}

# pip's local indexes and wheel folders (where the machine has them, as these do), mounted into the build so that
# the pinned torch comes from the disk; elsewhere the Dockerfile's index is used.
for dir in /opt/pypi /opt/pypi-more /opt/wheels /etc/xdg/pip; do
    [[ -d $dir ]] && BUILD_OPTS+=(-v "$dir:$dir:ro")
done
[[ -f /etc/pip.conf ]] && BUILD_OPTS+=(-v /etc/pip.conf:/etc/pip.conf:ro)
if [[ -d /opt/pypi-more/simple/torch ]]; then
    BUILD_ARGS+=(--build-arg TORCH_INDEX_URL=file:///opt/pypi-more/simple)
fi

build() {  # build TAG [MODEL_SOURCE]
    local tag=$1 started
    started=$(now)
    $ENGINE build "${BUILD_OPTS[@]}" "${BUILD_ARGS[@]}" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
        ${2:+--build-arg MODEL_SOURCE=$2} -f "docker/Dockerfile.$VARIANT" -t "$tag" . >"$WORK/build-${tag##*:}.log" 2>&1 \
        || { tail -30 "$WORK/build-${tag##*:}.log"; fail "build of $tag (log: $WORK/build-${tag##*:}.log)"; }
    log "built $tag in $(since "$started") s: $(size "$tag")"
}

size() { $ENGINE image inspect -f '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'; }

cd "$ROOT"
[[ -f models/default/manifest.json ]] || fail "no models/default to bake in: run \`make model\` first"
if [[ $VARIANT == gpu ]]; then  # its base is NVIDIA's CUDA runtime image: it needs a registry (no stand-in)
    cuda=$(sed -n 's/^ARG CUDA_IMAGE=//p' docker/Dockerfile.gpu)
    $ENGINE image inspect "$cuda" >/dev/null 2>&1 || $ENGINE pull -q "docker.io/$cuda" >/dev/null 2>&1 \
        || fail "the GPU image's base $cuda is not here and no registry answers: load it (\`$ENGINE load\`) first"
fi
PYTHON_IMAGE=$(base_image)
log "base image: $PYTHON_IMAGE"
build "$TAG"
if [[ $VARIANT == gpu ]]; then
    log "the GPU image is built; running it needs a GPU (not checked here)"
    exit 0
fi
build "$TAG-mounted" docker/no-model

# --- an operator's checks of one running container ------------------------------------------------------------
"$PY" -c "
import io, sys
from PIL import Image
from bench.photos import group_photo
Image.fromarray(group_photo(1)).save(sys.argv[1], 'JPEG')" "$WORK/photo.jpg"

check() {  # check NAME IMAGE [run options...]
    local name=$1 image=$2 started ready=""
    shift 2
    $ENGINE rm -f "$name" >/dev/null 2>&1 || true
    started=$(now)
    $ENGINE run -d --name "$name" "${RUN_OPTS[@]}" --network host --read-only --tmpfs /tmp -e "FER_PORT=$PORT" \
        --stop-timeout "$GRACE" "$@" "$image" >/dev/null
    while [[ $(echo "$(now) - $started < $START_PERIOD" | bc) == 1 ]]; do
        if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then ready=$(since "$started"); break; fi
        sleep 1
    done
    [[ -n $ready ]] || { $ENGINE logs "$name" | tail -20; fail "$name: /readyz not ready within ${START_PERIOD} s"; }
    log "$name: ready in $ready s ($(curl -s "http://127.0.0.1:$PORT/readyz"))"
    local answer
    answer=$(curl -sf -F "files=@$WORK/photo.jpg" "http://127.0.0.1:$PORT/predict") || fail "$name: /predict failed"
    "$PY" -c "
import json, sys
answer = json.loads(sys.argv[1])
faces = answer['predictions'][0]['faces']
assert faces, 'no face found in the photo'
print(f\"{len(faces)} face(s): {faces[0]['label']} {faces[0]['confidence']:.2f}; model {answer['model']['backend']}, \"
      f\"precision {answer['model'].get('precision')}\")" "$answer" | sed "s/^/$(date +%T)  $name: \/predict: /"
    curl -sf "http://127.0.0.1:$PORT/metrics" | grep -q '^fer_requests_total' || fail "$name: /metrics has no fer_requests_total"
    log "$name: /metrics scraped"
    if [[ $ENGINE == podman ]]; then
        $ENGINE healthcheck run "$name" >/dev/null || fail "$name: the HEALTHCHECK command failed"
    else
        local health
        for _ in $(seq 30); do
            health=$($ENGINE inspect -f '{{.State.Health.Status}}' "$name")
            [[ $health == healthy ]] && break
            sleep 1
        done
        [[ $health == healthy ]] || fail "$name: health $health"
    fi
    log "$name: the image's HEALTHCHECK passes"
    local uid
    uid=$($ENGINE exec "$name" id -u)
    [[ $uid == 10001 ]] || fail "$name: runs as uid $uid, not 10001"
    log "$name: runs as uid 10001 on a read-only root (only /tmp writable)"
    if [[ $name == fer-smoke-baked ]]; then prometheus_scrapes; fi
    started=$(now)
    $ENGINE stop -t "$GRACE" "$name" >/dev/null
    local stopped code
    stopped=$(since "$started")
    code=$($ENGINE inspect -f '{{.State.ExitCode}}' "$name")
    [[ $code == 0 ]] || { $ENGINE logs "$name" | tail -20; fail "$name: exit code $code after stop"; }
    [[ $(echo "$stopped < $GRACE" | bc) == 1 ]] || fail "$name: stop took $stopped s (grace $GRACE s)"
    log "$name: stopped in $stopped s, exit code 0"
    $ENGINE rm "$name" >/dev/null
}

prometheus_scrapes() {
    # The project's Prometheus configuration, its targets aimed at this container, and a query of the request rate.
    command -v prometheus >/dev/null || { log "prometheus not installed (apt-get install prometheus): skipped"; return; }
    local config=$WORK/prometheus.yml data=$WORK/prometheus-data prom_port=$((PORT + 1)) pid result
    sed "s/targets: .*/targets: [\"127.0.0.1:$PORT\"]/" docker/prometheus/prometheus.yml > "$config"
    rm -rf "$data"
    prometheus --config.file="$config" --storage.tsdb.path="$data" --web.listen-address="127.0.0.1:$prom_port" \
        >"$WORK/prometheus.log" 2>&1 &
    pid=$!
    for _ in $(seq 20); do  # traffic across a few scrapes (every 5 s), so that rate() has two samples
        curl -sf -F "files=@$WORK/photo.jpg" "http://127.0.0.1:$PORT/predict" >/dev/null
        sleep 1
    done
    result=$(curl -sf "http://127.0.0.1:$prom_port/api/v1/query" \
             --data-urlencode 'query=sum(rate(fer_requests_total{endpoint="/predict"}[1m]))') || true
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    "$PY" -c "
import json, sys
result = json.loads(sys.argv[1])['data']['result']
assert result and float(result[0]['value'][1]) > 0, f'no request rate: {result}'
print(f\"Prometheus scraped the service: /predict at {float(result[0]['value'][1]):.2f} requests/s\")" "${result:-{\}}" \
        | sed "s/^/$(date +%T)  /" || fail "Prometheus did not answer the query (log: $WORK/prometheus.log)"
}

check fer-smoke-baked "$TAG"
check fer-smoke-mounted "$TAG-mounted" -v "$ROOT/models/default:/models/default:ro"
log "image-smoke passed: $TAG $(size "$TAG"), $TAG-mounted $(size "$TAG-mounted")"
