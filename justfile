# Everyday recipes. Everything runs from the project's own venv (.venv).
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"

# list recipes
default:
    @just --list

# create .venv and install chatsrv (editable) with its test extras
install: (_install "test")

# create .venv and install chatsrv (editable) with its runtime dependencies only
install-runtime: (_install "")

# Install chatsrv into .venv, editable, with EXTRAS (comma list; "" = runtime dependencies
# only), unless the last install already covers them: the stamp .venv/.chatsrv-installed
# holds a hash of pyproject.toml and the Python, and the extras installed with it. An
# editable install sees source changes without reinstalling, so only a change to
# pyproject.toml (dependencies, entry points), another Python or a non-editable install
# reinstalls. Delete the stamp (or .venv) to force one.
_install EXTRAS:
    #!/usr/bin/env bash
    set -euo pipefail
    test -x {{py}} || python3 -m venv {{venv}}
    stamp={{venv}}/.chatsrv-installed
    key=$( { cat pyproject.toml; {{py}} -VV; } | sha256sum | cut -d' ' -f1)
    # the extras installed under this key, as ",a,b," ("," = runtime only; "" = no valid
    # install: no stamp, another key, or chatsrv not installed editable from this checkout)
    have=""
    pth=$(ls {{venv}}/lib/python3*/site-packages/_editable_impl_chatsrv.pth 2>/dev/null || true)
    if [[ -f $stamp && -n $pth && "$(cat "$pth")" == "$PWD" ]]; then
        read -r old extras < "$stamp" || true
        [[ ${old:-} == "$key" ]] && have=${extras:-}
    fi
    want=${have:-,}
    extras_wanted="{{EXTRAS}}"
    for x in ${extras_wanted//,/ }; do [[ $want == *",$x,"* ]] || want+="$x,"; done
    [[ -n $have && $want == "$have" ]] && exit 0  # up to date
    list=${want#,}; list=${list%,}
    echo "installing chatsrv${list:+[$list]} into {{venv}} (first run, or pyproject.toml, the Python or the extras changed)"
    {{py}} -m pip install -q --disable-pip-version-check -e ".${list:+[$list]}"
    echo "$key $want" > "$stamp"

# run the server on the embedded default (SQLite in ./data), or as configured by env
run *ARGS: install-runtime
    {{venv}}/bin/chatsrv serve {{ARGS}}

# the whole suite: SQLite, the real PostgreSQL and Redis (started if not running), lint
test *ARGS: install
    .ci/services
    {{py}} -m pytest {{ARGS}}
    {{just_executable()}} lint

# apply migrations to the configured database
migrate: install-runtime
    {{venv}}/bin/chatsrv migrate

# rewrite the README's settings table from chatsrv/config.py
readme-settings: install-runtime
    {{py}} -c 'import re, pathlib; from chatsrv.config import markdown_table as t; p = pathlib.Path("README.md"); s = p.read_text(); a, b = "<!-- settings:begin -->\n", "\n<!-- settings:end -->"; p.write_text(s.split(a)[0] + a + t() + b + s.split(b)[1])'

# ruff (with the ASYNC rules) and mypy
lint: install
    {{venv}}/bin/ruff check chatsrv tests bench
    {{venv}}/bin/mypy chatsrv

# regenerate chatsrv/_pb from protos/ (protoc + grpclib plugin, then the import fix-up)
proto: install
    {{py}} protos/generate.py

# load bench against a server it starts (see bench/README.md); installs the `bench` extra
# (matplotlib) for bench.png
bench *ARGS: (_install "test,bench")
    {{py}} -m bench {{ARGS}}

# redraw a bench plot from its results.json (default: bench/results.json -> bench/results.png)
bench-plot JSON="bench/results.json" PNG="bench/results.png": (_install "test,bench")
    {{py}} -m bench.report {{JSON}} {{PNG}}

# the compose deployment end to end (podman): build, up, a cross-node chat, stop a node,
# reconnect and sync, down; prints each step's time (deploy/README.md). --no-build, --keep
deploy-check *ARGS:
    python3 deploy/check.py {{ARGS}}
