"""scripts/check_wheel.py, the wheel step's gate, refuses what it should: a tag newer than the target or plain
`linux`, an unstripped extension, a wheel or extension over its size limit. (That it passes the real release
wheel is shown by the wheel step itself.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fastwds._core

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_wheel.py"
EXTENSION = Path(fastwds._core.__file__)


def fake_wheel(tmp_path: Path, platform: str, ext: bytes) -> Path:
    wheel = tmp_path / f"fastwds-0.1.0-cp310-abi3-{platform}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("fastwds/__init__.py", "")
        zf.writestr("fastwds/_core.abi3.so", ext)
    return wheel


def check(wheel: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(wheel), *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF extension")
def test_plain_linux_tag_and_newer_manylinux_fail(tmp_path):
    ext = EXTENSION.read_bytes()
    out = check(fake_wheel(tmp_path, "linux_x86_64", ext), "--target", "manylinux_2_17")
    assert out.returncode == 1
    assert "wheel tag linux_x86_64 is not manylinux_2_17 or older" in out.stderr
    newer = tmp_path / "newer"
    newer.mkdir()
    out = check(fake_wheel(newer, "manylinux_2_34_x86_64", ext), "--target", "manylinux_2_28")
    assert out.returncode == 1
    assert "wheel tag manylinux_2_34_x86_64 is not manylinux_2_28 or older" in out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF extension")
def test_unstripped_extension_fails(tmp_path):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to make an unstripped shared object")
    (tmp_path / "x.c").write_text("int fastwds_answer(void) { return 42; }\n")
    subprocess.run(
        [cc, "-g", "-shared", "-fPIC", "-o", str(tmp_path / "x.so"), str(tmp_path / "x.c")], check=True
    )
    out = check(fake_wheel(tmp_path, "manylinux_2_17_x86_64", (tmp_path / "x.so").read_bytes()))
    assert out.returncode == 1
    assert "the extension is not stripped" in out.stderr


def test_size_limits(tmp_path):
    wheel = fake_wheel(tmp_path, "macosx_11_0_arm64", b"\0" * 3_000_000)
    out = check(wheel, "--max-wheel-mb", "6", "--max-so-mb", "15")
    assert out.returncode == 0, out.stderr
    out = check(wheel, "--max-so-mb", "2.5", "--max-wheel-mb", "0.001")
    assert out.returncode == 1
    assert "fastwds/_core.abi3.so is 3.00 MB, over 2.5 MB" in out.stderr
    assert "over 0.001 MB" in out.stderr
