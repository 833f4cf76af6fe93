#!/bin/sh
# Write the compose stack's two env files once, with fresh random secrets:
#   deploy/chatsrv.env   read by both nodes: JWT_SECRET, DATABASE_URL (with the database
#                        password), and the optional settings you may add (TURN, STUN, ...)
#   deploy/postgres.env  read by PostgreSQL: POSTGRES_PASSWORD (used when the data volume
#                        is initialised)
# Both are mode 0600 and git-ignored. compose.yaml names them with `env_file:`, so podman
# gets `--env-file PATH`: no secret is on a command line, in `podman-compose` output, or
# needed in your shell for `up`, `ps`, `logs` or `down`.
# An existing file is never overwritten (the database volume keeps the password it was
# created with); delete both files and the volume to start over.
# Usage: deploy/make-env.sh
set -eu
cd "$(dirname "$0")"
umask 077
secret() {
    python3 -c "import secrets, sys; print(secrets.token_urlsafe(int(sys.argv[1])))" "$1"
}
if [ -e chatsrv.env ] || [ -e postgres.env ]; then
    if [ -e chatsrv.env ] && [ -e postgres.env ]; then
        echo "deploy/chatsrv.env and deploy/postgres.env exist: left as they are"
        exit 0
    fi
    echo "make-env: only one of deploy/chatsrv.env and deploy/postgres.env exists;" \
         "remove it (and the pgdata volume) or write the other by hand" >&2
    exit 1
fi
# token_urlsafe gives [A-Za-z0-9_-] only: nothing to quote in an env file or a URL.
password=$(secret 24)
cat > postgres.env.tmp <<EOF
# PostgreSQL of the compose stack (deploy/make-env.sh). Used once, when the pgdata volume
# is initialised; must match the password in deploy/chatsrv.env.
POSTGRES_PASSWORD=$password
EOF
cat > chatsrv.env.tmp <<EOF
# Settings of both chatsrv nodes (deploy/make-env.sh; see \`chatsrv check-config --markdown\`
# for every setting). One KEY=value a line, no quotes, no \${...} expansion. A setting that
# compose.yaml gives under \`environment:\` (node id, addresses, ports, Redis URL,
# SHUTDOWN_DEADLINE) wins over this file.
JWT_SECRET=$(secret 48)
DATABASE_URL=postgresql://chatsrv:$password@postgres:5432/chatapp
CONNECT_RETRY_DEADLINE=60
DB_POOL_SIZE=10
BCRYPT_ROUNDS=12
# WebRTC: STUN_URLS defaults to stun:stun.l.google.com:19302 (STUN_URLS= for none).
# TURN needs both lines (coturn with use-auth-secret and the same static-auth-secret):
#STUN_URLS=stun:turn.example.com:3478
#TURN_URLS=turn:turn.example.com:3478?transport=udp,turns:turn.example.com:5349?transport=tcp
#TURN_SECRET=
EOF
mv postgres.env.tmp postgres.env
mv chatsrv.env.tmp chatsrv.env
echo "wrote deploy/chatsrv.env and deploy/postgres.env (mode 0600)"
