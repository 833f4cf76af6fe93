"""The contract as types: every WebSocket frame in and out, every REST body, and the one
table from error to HTTP status, error code and close code.

msgspec structs, no I/O and no Trio: services build the frames they publish from them,
transports decode and encode with them, bench/ speaks with them, and docs/protocol.md is
checked against them (tests/unit/test_protocol.py).

- frames.py   WebSocket: inbound frames (one tagged union on "type"), outbound payloads,
              Frame (an outbound frame, encoded once however many sockets get it)
- rest.py     REST request and response bodies (the OpenAPI document is built from them)
- text.py     what text and numbers every backend can store, checked at decode time
- errors.py   error -> HTTP status; close codes and what a client should do about them
- render.py   entities -> payloads: one rendering per entity
"""
