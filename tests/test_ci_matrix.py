"""CI's own promises: .ci/run runs README's test command, finds the Pythons it says it
uses, and every pytest run says which REALALLOC_DEBUG level it ran at (tests/conftest.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CI_RUN = ROOT / ".ci" / "run"

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README.md no longer starts with a ```sh block of commands"
    return block.group(1).strip().splitlines()


def test_ci_runs_the_readme_test_command() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    found = re.search(r'^TEST_COMMAND="(.*)"$', CI_RUN.read_text(), re.MULTILINE)
    assert found is not None, ".ci/run no longer sets TEST_COMMAND"
    assert found.group(1) == commands[1]


@needs_bash
def test_ci_run_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(CI_RUN)], check=True)


def fake_python(path: Path, version: str) -> None:
    """An executable that answers .ci/run's version question as Python ``version``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(0o755)


@needs_bash
def test_ci_run_picks_the_newest_pyenv_patch_release(tmp_path: Path) -> None:
    root = tmp_path / "pyenv"
    for name in ("3.12.9", "3.12.10", "3.13.0t", "3.13-dev"):
        version = name[:4]
        fake_python(root / "versions" / name / "bin" / f"python{version}", version)
    env = {**os.environ, "PYENV_ROOT": str(root)}
    env["PATH"] = os.pathsep.join(  # no pyenv (its shims): PYENV_ROOT is read directly
        p for p in env["PATH"].split(os.pathsep) if "pyenv" not in p
    )
    out = subprocess.run(
        ["bash", str(CI_RUN), "--plan"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert f"Python 3.12: {root}/versions/3.12.10/bin/python3.12 " in out, out
    assert "3.13.0t" not in out and "3.13-dev" not in out, out  # free-threaded, dev builds
    for version in ("3.10", "3.11", "3.13"):
        assert re.search(rf"^Python {re.escape(version)}: ", out, re.MULTILINE), out


def pytest_header(tmp_path: Path, level: str | None, *args: str) -> str:
    """The output of collecting one small test file in a new pytest process, whose
    environment has REALALLOC_DEBUG=level (or none).  It runs in tmp_path, so the
    realalloc it imports is the one installed, as in this process."""
    env = {k: v for k, v in os.environ.items() if k != "REALALLOC_DEBUG"}
    if level is not None:
        env["REALALLOC_DEBUG"] = level
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider",
            "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
            str(ROOT / "tests" / "test_exports.py"), *args,
        ],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_the_header_says_the_default_level(tmp_path: Path) -> None:
    out = pytest_header(tmp_path, None)
    assert "REALALLOC_DEBUG=3 (the suite's default)" in out, out


@pytest.mark.slow
def test_the_environment_sets_the_level_and_quiet_runs_say_it_too(tmp_path: Path) -> None:
    out = pytest_header(tmp_path, "0", "-q")
    assert "REALALLOC_DEBUG=0 (set by the environment)" in out, out
