"""`just run` installs once: the justfile's install recipes run pip only when the stamp says
the venv is not what pyproject.toml, the Python and the wanted extras need. Driven with the
real `just` on a copy of the justfile, with a stand-in `.venv/bin/python` that records each
pip call and lays down the editable-install pointer a real install would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
# -VV: the version; -m pip install ...: recorded, and an editable install's .pth written
if [[ $1 == -VV ]]; then echo "Python 3.11.0 (stand-in)"; exit 0; fi
if [[ $1 == -m && $2 == pip ]]; then
    shift 2; echo "$*" >> "$PIP_LOG"
    site=.venv/lib/python3.11/site-packages; mkdir -p $site
    printf %s "$PWD" > $site/_editable_impl_chatsrv.pth
    exit 0
fi
exit 3
"""


def _just() -> str:
    found = shutil.which("just") or str(Path(sys.executable).with_name("just"))
    if not Path(found).is_file():
        if IN_CI:
            pytest.fail("just is missing (the README's commands install it: rust-just)")
        pytest.skip("!!! SKIPPED: no `just` (pip install rust-just)")
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "justfile", tmp_path / "justfile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return tmp_path


def _pip_calls(project: Path, *recipe: str) -> list[str]:
    log = project / "pip.log"
    before = log.read_text().splitlines() if log.exists() else []
    r = subprocess.run([_just(), *recipe], cwd=project, capture_output=True, text=True,
                       timeout=30, env={**os.environ, "PIP_LOG": str(log)})
    assert r.returncode == 0, r.stdout + r.stderr
    return (log.read_text().splitlines() if log.exists() else [])[len(before):]


def test_run_installs_runtime_only_and_once(project: Path) -> None:
    first = _pip_calls(project, "install-runtime")
    assert len(first) == 1 and first[0].endswith("-e .")  # no [test]: runtime only
    assert _pip_calls(project, "install-runtime") == []  # nothing changed: no pip at all


def test_the_test_extras_cover_a_later_run(project: Path) -> None:
    assert _pip_calls(project, "install-runtime")[0].endswith("-e .")
    assert _pip_calls(project, "install")[0].endswith("-e .[test]")
    assert _pip_calls(project, "install-runtime") == []  # [test] includes the runtime
    assert _pip_calls(project, "install") == []
    assert _pip_calls(project, "_install", "test,bench")[0].endswith("-e .[test,bench]")
    assert _pip_calls(project, "install") == []


def test_a_changed_pyproject_or_install_reinstalls(project: Path) -> None:
    _pip_calls(project, "install")
    with (project / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency, say\n")
    # a new key: the extras asked for now, not the ones of the old key
    assert _pip_calls(project, "install-runtime")[0].endswith("-e .")
    assert _pip_calls(project, "install-runtime") == []
    # chatsrv no longer installed editable from here (e.g. `pip install .` over it)
    pth = next(project.glob(".venv/lib/python3*/site-packages/_editable_impl_chatsrv.pth"))
    pth.unlink()
    assert len(_pip_calls(project, "install-runtime")) == 1
    (project / ".venv" / ".chatsrv-installed").unlink()  # the documented way to force one
    assert len(_pip_calls(project, "install-runtime")) == 1
