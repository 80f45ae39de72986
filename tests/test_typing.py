"""Type checkers see what a pipeline is: each fluent method returns the class it was called on, so a chain of
them keeps its type (scripts/typecheck.sh checks the package itself with mypy and the stub with stubtest)."""

from __future__ import annotations

import re
from pathlib import Path

import mypy.api
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python"

CHAINS = {
    'wds.WebDataset("x.tar", shardshuffle=False).shuffle(10).decode("rgb8").to_tuple("jpg").batched(4)': (
        "fastwds.compat.WebDataset"
    ),
    'wds.WebDataset("x.tar", shardshuffle=False).decode_images("rgb8", size=(8, 8)).set_epoch(1)': (
        "fastwds.compat.WebDataset"
    ),
    'wds.WebDataset("x.tar", shardshuffle=False).with_epoch(10).with_length(3).repeat(2)': (
        "fastwds.compat.WebDataset"
    ),
    "wds.WebLoader([], batch_size=None).unbatched().shuffle(10).batched(4)": "fastwds.compat.WebLoader",
    "wds.FluidWrapper([1, 2]).map(str).select(bool).slice(1)": "fastwds.compat.FluidWrapper",
    'wds.DataPipeline(wds.SimpleShardList("x.tar")).compose(wds.shuffle(3)).with_epoch(10)': (
        "fastwds.pipeline.DataPipeline"
    ),
    'wds.TarWriter("x.tar").__enter__()': "fastwds.writer.TarWriter",
}


@pytest.mark.timeout(240)
def test_fluent_chains_keep_their_class(tmp_path: Path) -> None:
    program = "import fastwds as wds\n" + "".join(f"reveal_type({chain})\n" for chain in CHAINS)
    (tmp_path / "chains.py").write_text(program)
    # torch is left out (as Any): reading its sources would take most of the run.
    (tmp_path / "mypy.ini").write_text(
        f"[mypy]\npython_version = 3.10\nmypy_path = {PACKAGE}\nignore_missing_imports = True\n"
        "[mypy-torch,torch.*]\nfollow_imports = skip\n"
    )
    out, err, status = mypy.api.run(
        [
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(tmp_path / "chains.py"),
        ]
    )
    assert status == 0, out + err
    revealed = re.findall(r'Revealed type is "([^"]+)"', out)
    assert revealed == list(CHAINS.values()), out
