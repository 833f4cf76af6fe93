"""docs/protocol.md and chatsrv/protocol describe the same protocol: every frame type the
types have is documented, and the document lists no frame the types do not have; the close
codes and error codes agree too."""

from __future__ import annotations

import re
from pathlib import Path

from chatsrv.protocol.errors import CLOSE_CODES
from chatsrv.protocol.frames import INBOUND, OUTBOUND, decode_frame

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def section(title: str) -> str:
    start = DOC.index(title)
    end = DOC.find("\n#", start + len(title))
    return DOC[start:end if end != -1 else None]


def first_cells(text: str, column: int = 0) -> list[str]:
    """The backticked names in one column of a markdown table's body rows."""
    names = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > column:
            names += re.findall(r"`([a-z_]+)`", cells[column])
    return names


def test_every_frame_type_is_documented_and_nothing_more() -> None:
    server = set(first_cells(section("### Server → client")))
    client = set(first_cells(section("### Client → server")))
    calls = section("### Calls")
    for line in calls.splitlines():
        if not line.startswith("| ") or "type" in line.split("|")[2]:
            continue
        direction, type_cell = [c.strip() for c in line.strip("|").split("|")][:2]
        names = set(re.findall(r"`([a-z_]+)`", type_cell))
        if direction.startswith("→") or direction.startswith("↔"):
            client |= names
        if direction.startswith("←") or direction.startswith("↔"):
            server |= names
    assert client == set(INBOUND), (client ^ set(INBOUND))
    assert server == set(OUTBOUND), (server ^ set(OUTBOUND))


def test_every_close_code_is_documented() -> None:
    documented = {int(c) for c in re.findall(r"^\| (\d{4}) \|", section("## Close codes"),
                                             re.M)}
    assert documented == set(CLOSE_CODES)


def test_the_decoder_knows_every_documented_client_frame() -> None:
    for type_ in INBOUND:
        try:
            decode_frame(f'{{"type": "{type_}", "payload": {{}}}}')
        except Exception as exc:  # a payload error, never "unknown type"
            assert getattr(exc, "code", "") != "unknown_type", type_
