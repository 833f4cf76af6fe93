#!/bin/sh
# Build the four images of compose.yaml with podman directly (same tags as compose.yaml, so
# `podman-compose up` then finds them and builds nothing). The chatsrv image's build stage
# (python3-venv, hatchling, the wheels: ~320 MB) is tagged localhost/chatsrv-build instead
# of being left as an untagged image: its layers make a rebuild after a code change take
# seconds. `podman rmi localhost/chatsrv-build` frees it (the next build is then a full one).
# Images of an earlier build that this one superseded (untagged, label io.chatsrv.image)
# are removed at the end; nothing else is pruned.
#   BASE_IMAGE  base of all four (default debian:bookworm-slim; without a registry:
#               localhost/debian:bookworm from deploy/make-base-image.sh)
#   CA_BUNDLE   a CA bundle pip must trust behind a TLS-intercepting proxy; mounted into the
#               build, never stored in the image
# Extra arguments go to every `podman build` (e.g. --no-cache).
# Usage: [BASE_IMAGE=...] [CA_BUNDLE=...] deploy/build-images.sh [podman build args]
set -eu
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
set -- --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@"
t0=$(date +%s)
chatsrv_build() {
    if [ -n "${CA_BUNDLE:-}" ]; then
        podman build "$@" -v "$CA_BUNDLE:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt
    else
        podman build "$@"
    fi
}
chatsrv_build "$@" --target build -t localhost/chatsrv-build:latest -f Containerfile .
chatsrv_build "$@" -t localhost/chatsrv:latest -f Containerfile .
t1=$(date +%s)
podman build "$@" -t localhost/chatsrv-postgres:15 -f deploy/postgres.Containerfile deploy
podman build "$@" -t localhost/chatsrv-redis:7 -f deploy/redis.Containerfile deploy
podman build "$@" -t localhost/chatsrv-haproxy:latest -f deploy/haproxy.Containerfile deploy
t2=$(date +%s)
podman image prune -f --filter label=io.chatsrv.image >/dev/null
echo "built chatsrv in $((t1 - t0)) s, postgres+redis+haproxy in $((t2 - t1)) s"
podman image ls --filter reference='localhost/chatsrv*'
