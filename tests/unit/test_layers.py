"""The layers of docs/architecture.md, held by the imports: each package imports only the layers
below it (and the standard library or third-party packages), so that the specification never
reaches the kernel and the reference datapath never reaches a backend."""
from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "dataplane"
# package -> the dataplane packages it may import (itself always; `errors` everywhere)
ALLOWED = {
    "spec": set(),
    "lab": {"spec"},
    "contract": {"spec"},
    "oracle": {"spec"},                 # never contract or a backend: it must be able to disagree with them
    "judge": {"spec"},
    "emulator": {"spec", "lab", "contract", "oracle"},
    "backends": {"spec", "lab", "contract"},
    "run": {"spec", "lab", "contract", "oracle", "emulator", "judge", "backends"},
}
# stdlib-only programs the lab runs inside its namespaces (no package import at all)
WORKLOAD = {"lab/workload/client.py", "lab/workload/netexec.py", "lab/workload/protocol.py",
            "lab/workload/sniffer.py", "lab/workload/flows.py", "backends/healthcheck_server.py"}


def _imports(path) -> set[str]:
    """The dataplane modules a file imports, as absolute names."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
    package = parts if rel.name == "__init__" else parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [f"{module}.{a.name}" for a in node.names]
                out.update(n for n in [module, *names])
            elif node.module and node.module.startswith("dataplane"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("dataplane"))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


FILES = sorted(p for p in PACKAGE.rglob("*.py") if _layer("dataplane." + p.relative_to(PACKAGE).parts[0]))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    rel = str(path.relative_to(PACKAGE))
    own = rel.split("/")[0]
    imported = _imports(path)
    if rel in WORKLOAD:
        assert not {m for m in imported if m != "dataplane" and not m.startswith(rel.rsplit("/", 1)[0].replace("/", "."))
                    and not m.startswith("dataplane." + rel.rsplit("/", 1)[0].replace("/", "."))}, imported
        return
    wrong = {m for m in imported
             if _layer(m) not in (None, own) and _layer(m) not in ALLOWED[own]}
    assert not wrong, f"{rel} imports {sorted(wrong)}; {own} may import {sorted(ALLOWED[own]) or 'nothing'} of dataplane"


def test_every_package_says_what_it_owns_and_may_import():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "Owns:" in doc and "May import:" in doc, init.relative_to(ROOT)


def test_nobody_probes_a_backend():
    """Backends declare their capabilities (backends.base.Backend); outside the registry nobody
    asks getattr/hasattr of one."""
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "backends":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr"):
                target = ast.unparse(node.args[0])
                assert "backend" not in target and target not in ("be", "b"), f"{rel}:{node.lineno}: {ast.unparse(node)}"
