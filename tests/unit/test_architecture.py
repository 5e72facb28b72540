"""The import graph keeps the rooms apart (read from the source with `ast`, nothing imported).

Rules, each failing with the offending file, line and import:
* `firmware_bridge` runs on the hash board's MCU: it imports only itself and modules MicroPython
  has (the standard ones it uses, `machine`, `micropython`).
* The device side (`agent` but its operator side `agent.site` and its command line: `agent.cli`
  and `python -m agent`)
  imports neither the operator side, nor the command line, nor `hil`, nor `tests`.
* The operator side uses the device side's contract code (`agent.grid`), never its control,
  chain or application modules.
* `hil` never imports `tests`; `agent` never imports `hil` except through `agent.cli` (lazily,
  for the lab subcommands).
* No two modules of `agent` import each other in a circle, directly or through others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "firmware_bridge", "hil")
#: what firmware_bridge may import besides itself: modules the MicroPython ports provide
MCU_MODULES = frozenset({"json", "struct", "time", "select", "machine", "micropython", "sys",
                         "gc", "os", "errno", "collections", "binascii", "hashlib"})
OPERATOR_SIDE = "agent.site"
OPERATOR_MAY_USE = ("agent.grid", "agent.errors", "agent.clock", "agent.site", "agent")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (the deepest one that exists)
    where: str  # file:line, relative to the tree

    def __str__(self) -> str:
        return f"{self.where} imports {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(name: str, path: Path, root: Path, known: set[str]) -> Iterator[Import]:
    """Every import statement of one module, anywhere in it (lazy and TYPE_CHECKING ones too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    rel = path.relative_to(root)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, f"{rel}:{node.lineno}")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(name, sub if sub in known else base, f"{rel}:{node.lineno}")


def graph(root: Path = ROOT) -> list[Import]:
    """Every import of every module of the three packages under `root`."""
    files = {module_name(p, root): p for pkg in PACKAGES if (root / pkg).is_dir()
             for p in sorted((root / pkg).rglob("*.py"))}
    return [imp for name, path in files.items() for imp in imports_of(name, path, root, set(files))]


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(edges: list[Import]) -> list[str]:
    """Every import that breaks a rule of the module docstring, with the rule."""
    out = []
    for imp in edges:
        src, dst = imp.source, imp.target
        top = dst.split(".")[0]
        if within(src, "firmware_bridge"):
            if top != "firmware_bridge" and top not in MCU_MODULES:
                out.append(f"{imp}: firmware_bridge imports only itself and MicroPython modules")
        elif within(src, OPERATOR_SIDE):
            if within(dst, "agent") and not any(
                    dst == p if p == "agent" else within(dst, p) for p in OPERATOR_MAY_USE):
                out.append(f"{imp}: the operator side uses only the contract code (agent.grid)")
            if top in ("hil", "tests"):
                out.append(f"{imp}: the operator side never imports {top}")
        elif within(src, "agent.cli") or src == "agent.__main__":
            if top == "tests":
                out.append(f"{imp}: the command line never imports tests")
        elif within(src, "agent"):
            if within(dst, OPERATOR_SIDE) or within(dst, "agent.cli"):
                out.append(f"{imp}: the device side never imports the operator side or the CLI")
            if top in ("hil", "tests"):
                out.append(f"{imp}: the device side never imports {top}")
        elif within(src, "hil") and top == "tests":
            out.append(f"{imp}: hil never imports tests")
    return out


def cycles(edges: list[Import], package: str = "agent") -> list[list[Import]]:
    """Each circle of imports among the modules of `package` (Tarjan's strongly connected
    components; a component of two or more modules is reported as one circle through it)."""
    adj: dict[str, list[Import]] = {}
    for imp in edges:
        if within(imp.source, package) and within(imp.target, package) \
                and imp.target != imp.source and imp.target != package:
            adj.setdefault(imp.source, []).append(imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for imp in adj.get(node, []):
            if imp.target not in index:
                visit(imp.target)
                low[node] = min(low[node], low[imp.target])
            elif imp.target in on_stack:
                low[node] = min(low[node], index[imp.target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(adj):
        if node not in index:
            visit(node)
    return [[imp for m in sorted(c) for imp in adj[m] if imp.target in c] for c in components]


def test_the_rooms_import_one_way() -> None:
    bad = violations(graph())
    assert not bad, "\n".join(bad)


def test_no_import_circle_inside_agent() -> None:
    found = cycles(graph())
    assert not found, "\n".join("circle: " + "; ".join(map(str, c)) for c in found)


# ---- the checker itself catches what it must (a tree written for the purpose) ----------------
def _tree(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return graph(tmp_path)


@pytest.mark.parametrize(("files", "expected"), [
    ({"agent/chain/driver.py": "def f():\n    from agent.site.signer import CommandSigner\n"},
     "agent/chain/driver.py:2 imports agent.site.signer: the device side never imports"),
    ({"agent/grid/link.py": "from ..site import client\n", "agent/site/client.py": ""},
     "agent/grid/link.py:1 imports agent.site.client: the device side"),
    ({"agent/control/governor.py": "import hil.rig\n"},
     "agent/control/governor.py:1 imports hil.rig: the device side never imports hil"),
    ({"firmware_bridge/link.py": "import serial\n"},
     "firmware_bridge/link.py:1 imports serial: firmware_bridge imports only itself"),
    ({"firmware_bridge/bridge.py": "from agent.errors import X\n", "agent/errors.py": ""},
     "firmware_bridge/bridge.py:1 imports agent.errors: firmware_bridge"),
    ({"agent/site/client.py": "from agent.control import governor\n",
      "agent/control/governor.py": ""},
     "agent/site/client.py:1 imports agent.control.governor: the operator side uses only"),
])
def test_a_forbidden_import_is_named(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    bad = violations(_tree(tmp_path, files))
    assert any(expected in line for line in bad), bad


def test_a_circle_is_named_with_its_imports(tmp_path: Path) -> None:
    edges = _tree(tmp_path, {
        "agent/grid/a.py": "from agent.grid import b\n",
        "agent/grid/b.py": "import agent.grid.c\n",
        "agent/grid/c.py": "def late():\n    from agent.grid.a import X\n",
        "agent/grid/d.py": "from agent.grid import a\n",
    })
    found = cycles(edges)
    assert len(found) == 1
    text = "; ".join(map(str, found[0]))
    assert "agent/grid/c.py:2 imports agent.grid.a" in text
    assert "agent.grid.d" not in text and "d.py" not in text


def test_allowed_imports_pass(tmp_path: Path) -> None:
    edges = _tree(tmp_path, {
        "agent/site/signer.py": "from agent.grid import cose\nfrom agent.errors import E\n",
        "agent/grid/cose.py": "", "agent/errors.py": "",
        "agent/cli/hil.py": "def run():\n    import hil.rig\n",
        "firmware_bridge/device.py": "import machine\nfrom firmware_bridge import link\n",
        "firmware_bridge/link.py": "",
    })
    assert violations(edges) == []
    assert cycles(edges) == []
