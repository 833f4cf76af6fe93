"""The README's curl walk-through works as written: its blocks (between the curl markers)
run in bash, in order, against a real server, and end with the message they sent."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import trio

from tests.conftest import IN_CI

README = Path(__file__).resolve().parents[2] / "README.md"



def _curl_blocks() -> str:
    text = README.read_text()
    section = text.split("<!-- curl:begin", 1)[1].split("<!-- curl:end -->", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the README's curl section lost its blocks"
    return "\n".join(blocks)


# john_doe is registered by the README itself: one fresh database, so one backend
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_readme_curl_walkthrough(server) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("curl") is None or shutil.which("python3") is None:
        if IN_CI:
            pytest.fail("curl and python3 are needed for the README's examples")
        pytest.skip("!!! SKIPPED: no curl or python3 on PATH")
    script = _curl_blocks().replace("http://localhost:8080", server.url)
    with trio.fail_after(30):
        done = await trio.run_process(["bash", "-euo", "pipefail", "-c", script],
                                      capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    # register (201 with a token), login, the sent message, then the history with it
    assert out.count('"token"') == 2
    history = json.loads(out[out.rindex('{"messages"'):])
    assert [m["content"] for m in history["messages"]] == ["Hello!"]
    assert history["has_more"] is False


def test_the_seeds_placeholder_ids_are_explained() -> None:
    text = README.read_text()
    for placeholder in ("user_id_2", "conv_123", "GET /api/users?q="):
        assert placeholder in text
