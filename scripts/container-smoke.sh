#!/usr/bin/env bash
# Build the image and try it as a user would: a worker container with its ports published on the
# host's loopback, the sample clip captured and subscribed to from the host, its outputs compared
# with the same clip through a worker on the host, /readyz and the image's HEALTHCHECK command
# checked, then `stop` (SIGTERM) and an exit code of 0 within the grace period.
#
#   bash scripts/container-smoke.sh
#
# The engine: docker with a live daemon, else podman if it can run containers; where neither can,
# it prints one line saying so and exits 77 ("could not run": nothing was tried, so not a pass;
# the test that calls it reports a skip). Exit 0 means every check ran and passed; 1 a failure.
# Environment:
#   SMOKE_ENGINE=docker|podman|buildah  force one. buildah (never picked by itself) builds with
#       `buildah bud --isolation=chroot` and runs the worker with `buildah run`, which shares the
#       host's network and is stopped by a SIGTERM to the worker process itself: for machines
#       where containers cannot be run (docs/CONTAINER.md).
#   SMOKE_BUILD_ARGS   extra build arguments, split on spaces (e.g. --build-arg BASE_IMAGE=...).
#   SMOKE_IMAGE        the tag to build (default localhost/streamconv:smoke).
#   SMOKE_PYTHON       the host's Python (default .venv/bin/python); the streamconv script next to it
#                      runs capture, subscribe and the reference worker. Build from the same tree.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="${SMOKE_IMAGE:-localhost/streamconv:smoke}"
PY="${SMOKE_PYTHON:-$ROOT/.venv/bin/python}"
SC="$(dirname "$PY")/streamconv"  # the console script: the installed streamconv, whatever the cwd
GRACE_S=10
STREAM=smoke
read -r -a BUILD_ARGS <<<"${SMOKE_BUILD_ARGS:-}"

say() { echo "container-smoke: $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}
COULD_NOT_RUN=77  # the automake/ctest convention for "skipped"
skip() {
    echo "container smoke skipped: $*"
    exit "$COULD_NOT_RUN"
}

# --- which engine --------------------------------------------------------------------------------
can_run_podman() {
    # An empty root file system and a command that is not in it: an engine that can start
    # containers gets as far as exec and answers 127 ("command not found", podman-run(1)); one
    # that cannot (no permission for namespaces or rlimits) fails before that with another code.
    local dir rc=0
    dir="$(mktemp -d)"
    timeout 60 podman run --rm --rootfs "$dir" /streamconv-probe >/dev/null 2>"$dir.err" || rc=$?
    PODMAN_PROBE="$(grep -m1 -v '^$' "$dir.err" || true)"
    rm -rf "$dir" "$dir.err"
    [[ $rc -eq 127 ]]
}

ENGINE="${SMOKE_ENGINE:-}"
if [[ -z $ENGINE ]]; then
    if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then
        ENGINE=docker
    elif command -v podman >/dev/null && timeout 20 podman info >/dev/null 2>&1; then
        if can_run_podman; then
            ENGINE=podman
        else
            skip "podman is installed but cannot run containers here (${PODMAN_PROBE:-no error text})"
        fi
    else
        skip "no container engine here (no docker daemon, no working podman)"
    fi
fi
case $ENGINE in docker | podman | buildah) ;; *) fail "SMOKE_ENGINE must be docker, podman or buildah, not '$ENGINE'" ;; esac
command -v "$ENGINE" >/dev/null || fail "SMOKE_ENGINE=$ENGINE, but $ENGINE is not installed"
[[ -x $PY && -x $SC ]] || fail "no streamconv at $SC: run scripts/setup.sh, or set SMOKE_PYTHON"
say "engine: $ENGINE, image: $IMAGE"

WORK="$(mktemp -d)"
CONTAINER="streamconv-smoke-$$"
CTR_PID=""  # buildah: the `buildah run` process
HOST_PID=""
cleanup() {
    set +e
    [[ -n $HOST_PID ]] && kill "$HOST_PID" 2>/dev/null
    case $ENGINE in
        docker | podman) "$ENGINE" rm -f "$CONTAINER" >/dev/null 2>&1 ;;
        buildah)
            [[ -n $CTR_PID ]] && kill "$CTR_PID" 2>/dev/null && wait "$CTR_PID" 2>/dev/null
            buildah rm "$CONTAINER" >/dev/null 2>&1
            ;;
    esac
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- build ---------------------------------------------------------------------------------------
case $ENGINE in
    docker) BUILD=(docker build) ;;
    podman) BUILD=(podman build --format docker) ;;  # the OCI format drops HEALTHCHECK
    buildah) BUILD=(buildah bud --isolation=chroot --layers --format docker) ;;
esac
say "building: ${BUILD[*]} ${BUILD_ARGS[*]} -t $IMAGE $ROOT"
"${BUILD[@]}" "${BUILD_ARGS[@]}" -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 ||
    { tail -n 30 "$WORK/build.log" >&2; fail "the image did not build (log above)"; }

free_ports() { "$PY" -c '
import socket
socks = [socket.socket() for _ in range(int(__import__("sys").argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()' "$1"; }
read -r IN OUT HTTP REF_IN REF_OUT < <(free_ports 5)

# --- the worker in a container -------------------------------------------------------------------
case $ENGINE in
    docker | podman)
        # Published on the host's loopback only, so plaintext is allowed explicitly (README, Security).
        "$ENGINE" run -d --name "$CONTAINER" -e STREAMCONV_WORKER__ALLOW_INSECURE=true \
            -p "127.0.0.1:$IN:5555" -p "127.0.0.1:$OUT:5556" -p "127.0.0.1:$HTTP:5557" \
            "$IMAGE" >/dev/null || fail "the worker container did not start"
        ctr_logs() { "$ENGINE" logs "$CONTAINER" 2>&1; }
        ctr_exec() { "$ENGINE" exec "$CONTAINER" "$@"; }
        ;;
    buildah)
        # The host's network: the worker binds the free ports itself instead of being published.
        buildah from --name "$CONTAINER" "$IMAGE" >/dev/null
        buildah run --isolation chroot \
            --env "STREAMCONV_WORKER__INPUT=tcp://127.0.0.1:$IN" \
            --env "STREAMCONV_WORKER__OUTPUT=tcp://127.0.0.1:$OUT" \
            --env "STREAMCONV_WORKER__HTTP=127.0.0.1:$HTTP" \
            "$CONTAINER" -- streamconv worker --config default >"$WORK/worker.log" 2>&1 &
        CTR_PID=$!
        ctr_logs() { cat "$WORK/worker.log"; }
        ctr_exec() { buildah run --isolation chroot "$CONTAINER" -- "$@"; }
        ;;
esac

descendants() {  # PID: every process below it
    local child
    for child in $(pgrep -P "$1"); do
        echo "$child"
        descendants "$child"
    done
}

http_status() {  # the HTTP status of the container worker's PATH, or 000 when it does not answer
    "$PY" -c '
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print("000")' "http://127.0.0.1:$HTTP/$1"
}

deadline=$((SECONDS + 120))
until [[ $(http_status readyz) == 200 ]]; do
    ((SECONDS < deadline)) || { ctr_logs >&2; fail "/readyz did not answer 200 within 120 s"; }
    sleep 1
done
say "/readyz: 200"
[[ $(http_status healthz) == 200 ]] || fail "/healthz did not answer 200"

# The image's own HEALTHCHECK command, run in the container. (buildah: the worker there listens on
# $HTTP of the host's network, so the port in the command is rewritten.)
case $ENGINE in
    buildah) INSPECT=(buildah inspect --type image "$IMAGE") ;;
    *) INSPECT=("$ENGINE" image inspect "$IMAGE") ;;
esac
readarray -t CHECK < <("${INSPECT[@]}" | "$PY" -c '
import json, sys
data = json.load(sys.stdin)
data = data[0] if isinstance(data, list) else data
# docker: Config.Healthcheck; podman: Healthcheck; buildah: Docker.config.Healthcheck
places = [data.get("Config"), data, data.get("Docker", {}).get("config")]
check = next((p["Healthcheck"] for p in places if isinstance(p, dict) and p.get("Healthcheck")), {})
test = check.get("Test") or []
if test[:1] == ["CMD"]:
    print(*test[1:], sep="\n")')
[[ ${#CHECK[@]} -gt 0 ]] || fail "the image has no HEALTHCHECK"
[[ $ENGINE == buildah ]] && CHECK=("${CHECK[@]//127.0.0.1:5557/127.0.0.1:$HTTP}")
ctr_exec "${CHECK[@]}" || fail "the image's HEALTHCHECK command failed: ${CHECK[*]}"
say "HEALTHCHECK command: passed"

# --- the sample clip through it, and through a worker on the host ---------------------------------
through() {  # INPUT OUTPUT DIR: capture the sample into INPUT, subscribe to OUTPUT, .npy into DIR
    local sub rc=0
    timeout 120 "$SC" subscribe --connect "tcp://127.0.0.1:$2" --stream "$STREAM" \
        --npy "$3" --timeout 60 >"$3.sub.log" 2>&1 &
    sub=$!
    timeout 120 "$SC" capture sample --connect "tcp://127.0.0.1:$1" \
        --stream "$STREAM" --wait 30 --wait-subscriber --output "tcp://127.0.0.1:$2" \
        >"$3.capture.log" 2>&1 || { cat "$3.capture.log" >&2; fail "capture into :$1 failed"; }
    wait "$sub" || rc=$?
    ((rc == 0)) || { cat "$3.sub.log" >&2; fail "subscriber of :$2 exited $rc"; }
}
through "$IN" "$OUT" "$WORK/container"
say "container: $(find "$WORK/container" -name '*.npy' | wc -l) output frames"

"$SC" worker --config default --device cpu --http off \
    --input "tcp://127.0.0.1:$REF_IN" --output "tcp://127.0.0.1:$REF_OUT" >"$WORK/host.log" 2>&1 &
HOST_PID=$!
through "$REF_IN" "$REF_OUT" "$WORK/host"
kill -TERM "$HOST_PID" && wait "$HOST_PID" || true
HOST_PID=""

# Same frames (every layer, every seq from 0) and the same values: bitwise where the two torch
# builds agree, else within the float32 guarantee (relative error under 1e-5, README).
"$PY" - "$WORK/container" "$WORK/host" <<'EOF' || fail "the container's outputs differ from the host's"
import sys
from collections import Counter
from pathlib import Path

import numpy as np

def frames(folder):
    # {stream}_{layer}_{session}_{seq}.npy: the session differs between runs, the rest must not.
    out = {}
    for path in Path(folder).glob("*.npy"):
        head, _session, seq = path.stem.rsplit("_", 2)
        out[(head, int(seq))] = np.load(path)
    return out

got, want = frames(sys.argv[1]), frames(sys.argv[2])
per_layer = Counter(head for head, _ in want)
if not want or set(got) != set(want):
    sys.exit(f"frames differ: {len(got)} from the container, {len(want)} from the host")
for head, n in per_layer.items():
    if sorted(seq for h, seq in want if h == head) != list(range(n)):
        sys.exit(f"{head}: not every frame from 0 arrived")
worst = max(
    float(np.abs(got[k] - want[k]).max() / max(float(np.abs(want[k]).max()), 1e-30)) for k in want
)
bitwise = all(np.array_equal(got[k], want[k]) for k in want)
print(f"{len(per_layer)} layers x {max(per_layer.values())} frames: "
      f"{'bitwise equal' if bitwise else f'max relative error {worst:.2e}'}")
sys.exit(0 if worst < 1e-5 else 1)
EOF

# --- SIGTERM ---------------------------------------------------------------------------------------
start=$SECONDS
case $ENGINE in
    docker | podman)
        "$ENGINE" stop -t "$GRACE_S" "$CONTAINER" >/dev/null
        code="$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
        ;;
    buildah)
        # `buildah run` kills its command on SIGTERM instead of passing it on: signal the worker,
        # the Python process among the descendants of the `buildah run` this script started.
        worker_pid=""
        for pid in $(descendants "$CTR_PID"); do
            cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
            program="${cmd%% *}"
            if [[ ${program##*/} == python* && $cmd == *" worker "* ]]; then worker_pid=$pid; fi
        done
        [[ -n $worker_pid ]] || fail "no worker process under buildah run ($CTR_PID)"
        kill -TERM "$worker_pid"
        code=0
        timeout "$GRACE_S" tail --pid="$CTR_PID" -f /dev/null || fail "the worker did not exit within $GRACE_S s"
        wait "$CTR_PID" || code=$?
        CTR_PID=""
        ;;
esac
took=$((SECONDS - start))
[[ $code == 0 ]] || { ctr_logs | tail -n 20 >&2; fail "the worker exited $code after SIGTERM"; }
((took < GRACE_S)) || fail "the worker took ${took} s to stop (grace period $GRACE_S s)"
say "SIGTERM: exit 0 in ${took} s"
echo "container smoke passed ($ENGINE)"
