"""The stage order, enforced: a module imports only from lower ranks or its own package.

Every `import` and `from ... import` counts, at the top of a module or inside a function (a lazy import is still
an arrow), with relative imports resolved. A package missing from RANKS is itself a failure, so a new package
gets a place in the order before it gets imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

RANKS: dict[str, int] = {
    "utilities": 0,
    "model": 1,  # a leaf: imports nothing of the other stages
    "contracts": 2, "store": 2, "adapters": 2,
    "plan": 3, "data": 3,  # not each other
    "train": 4,
    "export": 5,
    "finetune": 6,
    "serve": 7,
    "evals": 8,
    "gateway": 9,
    "demo": 10,
    "entry": 11,
}
# Top-level modules that share a rank form one unit and may import each other.
UNITS = {"errors": "utilities", "paths": "utilities", "lazy": "utilities", "clikit": "utilities",
         "__init__": "utilities",
         "cli": "entry", "__main__": "entry"}


def _unit(module: str, package: str) -> str | None:
    """The ranked unit of a dotted module name: `autarky.serve.engine` → `serve`; None outside `package`."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    name = parts[1] if len(parts) > 1 else "__init__"
    return UNITS.get(name, name)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted modules an import statement in `module` reaches (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    # `from autarky import serve` imports the subpackage: rank each name as a possible submodule.
    return [f"{target}.{alias.name}" for alias in node.names] if target.count(".") == 0 else [target]


def layer_violations(src: Path, package: str = "autarky") -> list[str]:
    """'file:line: importer (rank) → imported (rank)' for every import against RANKS under src/package."""
    found = []
    for path in sorted((src / package).rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parts[:-1] if is_package else rel.parts)
        unit = _unit(module, package)
        if unit not in RANKS:
            found.append((str(path.relative_to(src)), 1, f"{module} is in no rank of the stage order (add it to RANKS)"))
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _imported(node, module, is_package):
                other = _unit(target, package)
                if other is None or other == unit:
                    continue
                if other not in RANKS:
                    name = target.split(".")[1]
                    if (src / package / name).is_dir() or (src / package / f"{name}.py").is_file():
                        found.append((str(path.relative_to(src)), node.lineno, f"{module} → {target}: no rank"))
                    continue  # otherwise a name such as `from autarky import __version__`
                if RANKS[other] >= RANKS[unit]:
                    found.append((str(path.relative_to(src)), node.lineno, f"{module} (rank {RANKS[unit]}) → "
                                  f"{target} (rank {RANKS[other]}): against the stage order"))
    return [f"{file}:{line}: {what}" for file, line, what in sorted(found)]


def test_no_import_runs_against_the_stage_order():
    violations = layer_violations(SRC)
    assert not violations, "imports against the stage order:\n" + "\n".join(violations)


def test_the_checker_catches_a_bad_import(tmp_path):
    root = tmp_path / "autarky"
    for package in ("model", "train", "serve", "contracts"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "errors.py").write_text("")
    (root / "model" / "ok.py").write_text("from autarky.errors import UserError\nfrom . import ok\n")
    (root / "model" / "bad.py").write_text(
        "import torch\n"
        "def lazy():\n"
        "    from autarky.train import loop  # inside a function still counts\n"
        "from ..serve import engine\n"
        "import autarky.contracts.wire\n"
    )
    (root / "train" / "fine.py").write_text("from ..model import ok\nfrom autarky.contracts import wire\n")
    (root / "serve" / "__init__.py").write_text("from . import engine\nfrom .. import train\n")
    (root / "stray").mkdir()
    (root / "stray" / "x.py").write_text("")
    found = layer_violations(tmp_path)
    assert found == [
        "autarky/model/bad.py:3: autarky.model.bad (rank 1) → autarky.train (rank 4): against the stage order",
        "autarky/model/bad.py:4: autarky.model.bad (rank 1) → autarky.serve (rank 7): against the stage order",
        "autarky/model/bad.py:5: autarky.model.bad (rank 1) → autarky.contracts.wire (rank 2): against the stage "
        "order",
        "autarky/stray/x.py:1: autarky.stray.x is in no rank of the stage order (add it to RANKS)",
    ]
