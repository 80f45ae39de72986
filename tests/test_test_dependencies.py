"""The test suite needs nothing beyond requirements-dev.txt: on a fresh machine set up from it, no test fails
or is skipped for want of a package (optional benchmark comparisons are the harness's business)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# Import names of requirements-dev.txt's distributions, and of what they install themselves.
IMPORT_NAMES = {
    "pillow": {"PIL"},
    "pyyaml": {"yaml"},
    "dask": {"dask", "distributed", "cloudpickle", "psutil"},  # dask[distributed] installs these
    "maturin": set(),
    "pytest-timeout": {"pytest_timeout"},
}
# Modules of the project and the tests' own helpers.
LOCAL = {"fastwds", "conftest", "_core_dataset", "wheel_smoke", "remote_servers"}


def _dev_requirements() -> set[str]:
    names = set()
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower())
    return names


def _allowed() -> set[str]:
    allowed = set(sys.stdlib_module_names) | LOCAL
    for dist in _dev_requirements():
        allowed |= IMPORT_NAMES.get(dist, {dist.replace("-", "_")})
    return allowed


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True for an import inside `try: ... except ImportError` (a test of the package's absence too)."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.Try) and node in parent.body:
            for handler in parent.handlers:
                caught = handler.type
                names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
                if any(
                    isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names
                ):
                    return True
        node = parent
    return False


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every unguarded import and `importorskip` in a file."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and not _guarded(node, parents):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not _guarded(node, parents):
            found.append((node.lineno, (node.module or "").split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("importorskip", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            module = str(node.args[0].value)
            skip = node.func.attr == "importorskip"
            found.append((node.lineno, "importorskip:" + module if skip else module.split(".")[0]))
    return found


def test_tests_import_only_the_standard_library_and_requirements_dev() -> None:
    allowed = _allowed()
    assert {"torch", "webdataset", "numpy", "PIL", "msgpack", "hypothesis", "distributed"} <= allowed
    assert not {"torchvision", "nvidia"} & allowed
    wrong = [
        f"{path.name}:{line}: {name}"
        for path in sorted(TESTS.glob("*.py"))
        for line, name in _imports(path)
        if name not in allowed
    ]
    # `importorskip` would turn a missing requirement into a silent skip of core behaviour: import instead.
    assert wrong == []
