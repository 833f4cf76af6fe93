"""Load bench for chatsrv: a Trio load generator that starts (or targets) a server on
127.0.0.1, runs the scenarios in bench/README.md and writes JSON, a markdown table and a
plot. Run it with `python -m bench --help`."""
