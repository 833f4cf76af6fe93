# Everyday recipes. Everything runs from the project's own venv (.venv).
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"

# list recipes
default:
    @just --list

# create .venv and install chatsrv with its test extras
install:
    test -x {{py}} || python3 -m venv {{venv}}
    {{py}} -m pip install -q --disable-pip-version-check -e '.[test]'

# run the server on the embedded default (SQLite in ./data), or as configured by env
run *ARGS: install
    {{venv}}/bin/chatsrv serve {{ARGS}}

# the whole suite: SQLite, the real PostgreSQL and Redis (started if not running), lint
test *ARGS: install
    .ci/services
    {{py}} -m pytest {{ARGS}}
    {{just_executable()}} lint

# apply migrations to the configured database
migrate: install
    {{venv}}/bin/chatsrv migrate

# ruff (with the ASYNC rules) and mypy
lint: install
    {{venv}}/bin/ruff check chatsrv tests bench
    {{venv}}/bin/mypy chatsrv

# regenerate chatsrv/_pb from protos/ (protoc + grpclib plugin, then the import fix-up)
proto: install
    {{py}} protos/generate.py

# load bench against a server it starts (see bench/README.md)
bench *ARGS: install
    {{py}} -m bench {{ARGS}}

# the compose deployment end to end (podman): build, up, a cross-node chat, stop a node,
# reconnect and sync, down; prints each step's time (deploy/README.md). --no-build, --keep
deploy-check *ARGS:
    python3 deploy/check.py {{ARGS}}
