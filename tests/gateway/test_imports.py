"""The gateway's modules form no import circle: nothing imports back from the app (only the modules that run
it may), the gateway never imports the demo, and every module imports on its own in a fresh interpreter."""

import ast
import subprocess
import sys
from pathlib import Path

import autarky.gateway

PACKAGE = Path(autarky.gateway.__file__).parent
RUNNERS = {"server", "commands"}  # they run the app, so they import it


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (lazy imports count)."""
    names: set[str] = set()
    package = "autarky.gateway" + ("." + path.parent.name if path.parent != PACKAGE else "")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(["autarky.gateway", *parts])] = path
    return out


def test_only_the_runners_import_the_app():
    offenders = {name for name, path in modules().items()
                 if "autarky.gateway.app" in imported(path) and name.rsplit(".", 1)[-1] not in RUNNERS}
    assert offenders == set()


def test_the_gateway_never_imports_the_demo():
    offenders = {name for name, path in modules().items()
                 if any(m == "autarky.demo" or m.startswith("autarky.demo.") for m in imported(path))}
    assert offenders == set()


def test_each_module_imports_first_in_a_fresh_interpreter():
    names = [n for n in modules() if not n.endswith("__main__")]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in names:  # one interpreter per module: each one first, so a circle cannot hide behind order
        run = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"{name}: {run.stderr[-2000:]}"
