"""The package's modules import each other without cycles (run-time imports at module level; ``TYPE_CHECKING``
blocks and imports inside functions do not count)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "crfgan"


def module_imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:  # module level only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node) if isinstance(node, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else []:
            if isinstance(n, ast.ImportFrom):
                if n.level:  # relative: from .x import y
                    base = name.rsplit(".", n.level)[0] if "." in name else name
                    out.add(f"{base}.{n.module}" if n.module else base)
                elif n.module and n.module.startswith("crfgan"):
                    out.add(n.module)
            elif isinstance(n, ast.Import):
                out |= {a.name for a in n.names if a.name.startswith("crfgan")}
    return out


def graph() -> dict[str, set[str]]:
    mods = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        mods[name] = module_imports(p, name if rel.name != "__init__" else name + ".__init__")
    return {m: {d for d in deps if d in mods and d != m} for m, deps in mods.items()}


def test_no_import_cycles_in_crfgan():
    g = graph()
    assert "crfgan.dicom" in g["crfgan.io"] and "crfgan.render" in g["crfgan.generator"]  # the graph is read
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for d in sorted(g[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
