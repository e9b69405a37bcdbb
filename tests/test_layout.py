"""The package's shape: no import cycles among its modules; C code within its budgets."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "realalloc"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports when it is imported:
    module-level statements only (imports under ``if TYPE_CHECKING:`` or
    inside functions do not run at import)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            if not node.level:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & modules
            # "from pkg import submodule" needs the submodule; "from pkg import
            # name" needs pkg itself.
            found.update(submodules if len(submodules) == len(node.names) else {target})
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles() -> None:
    files = list(PACKAGE.rglob("*.py"))
    # Compiled modules (realalloc._fast, realalloc._shim) have stubs: leaves.
    modules = {_module_name(f) for f in [*files, *PACKAGE.rglob("*.pyi")]}
    graph = {m: set() for m in modules} | {_module_name(f): _imports(f, modules) for f in files}
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def _c_lines(*names: str) -> int:
    lines = (line for name in names for line in (ROOT / "csrc" / name).read_text().splitlines())
    return sum(1 for line in lines if line.strip())


def test_c_core_stays_within_its_budget() -> None:
    # The allocator core: shim, kernels, fast path, span hand-off (generated tables excluded).
    core = _c_lines("shim.h", "shim.c", "spanbits.h", "pages.h", "central.h", "fastpath.c")
    assert core <= 1600, f"csrc core is {core} non-blank lines, over the 1,600 budget"


def test_gc_kernels_stay_within_their_budget() -> None:
    # csrc/gc.c: mark, sweep and the safe-point stop, included by fastpath.c.
    kernels = _c_lines("gc.c")
    assert kernels <= 400, f"csrc/gc.c is {kernels} non-blank lines, over the 400 budget"
