"""The version lives in one place, the workspace Cargo.toml: `fastwds.__version__` (compiled into the
extension), the installed distribution's metadata (maturin reads Cargo.toml) and `fastwds --version` agree
with it."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import fastwds
from fastwds.cli import main

CARGO_TOML = Path(__file__).resolve().parents[1] / "Cargo.toml"
PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(fastwds.__file__)))


def cargo_version() -> str:
    text = CARGO_TOML.read_text()
    section = re.search(r"^\[workspace\.package\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
    assert section, "Cargo.toml has a [workspace.package] table"
    match = re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    assert match, "[workspace.package] sets the version"
    return match.group(1)


def test_version_is_the_cargo_version():
    assert fastwds.__version__ == cargo_version()


def test_distribution_metadata_has_the_same_version():
    assert importlib.metadata.version("fastwds") == fastwds.__version__


def test_cli_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fastwds {fastwds.__version__}\n"


def test_python_m_fastwds_version():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PYTHONPATH, *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run(
        [sys.executable, "-m", "fastwds", "--version"], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout == f"fastwds {fastwds.__version__}\n"
