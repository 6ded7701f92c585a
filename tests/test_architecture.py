"""The layout's rules, checked on the source: the library imports nothing of the book, no import cycles (lazy
imports included), no private name used across modules."""
import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "kanlib"
BOOK_LIBRARIES = ("nbformat", "yaml", "papermill", "pandas", "seaborn", "matplotlib", "IPython", "jupyter_book",
                  "nbconvert", "nbclient", "myst_nb", "sphinx")
LIBRARY_DEPENDENCIES = ("torch", "numpy", "numba", "triton", "sklearn", "tqdm")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def resolve(importer: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import statement in a module, lazy ones too."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found.append((resolve(name, node.level, node.module), [alias.name for alias in node.names], node.lineno))
    return found


def dependencies(name: str) -> set[str]:
    """The kanlib modules that importing ``name`` (or calling its functions) runs: each imported module, the
    submodules imported from a package, and the packages above them that are not above ``name`` itself."""
    own_ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found = set()
    for target, names, _ in imports_of(name):
        if not target.startswith("kanlib"):
            continue
        targets = [target] + [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        for module in targets:
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                ancestor = ".".join(parts[:i])
                if ancestor in MODULES and ancestor not in own_ancestors and ancestor != name:
                    found.add(ancestor)
    return found


def test_the_walker_sees_every_module_and_its_lazy_imports():
    assert "kanlib.ops.spline_linear" in MODULES and "kanlib.book.runner" in MODULES
    # the Triton launcher is imported inside a function of the dispatcher
    assert "kanlib.ops.spline_linear.triton_local" in dependencies("kanlib.ops.spline_linear")
    # importing a module of another package runs that package's __init__
    assert "kanlib.quant" in dependencies("kanlib.bench.quant")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_lazy_imports_included():
    graph = {name: dependencies(name) for name in MODULES if name != "kanlib"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_is_used_across_modules():
    offences = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        module_aliases = {}
        for target, names, line in imports_of(name):
            if not target.startswith("kanlib"):
                continue
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__") and target != name:
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}.{imported}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                target = resolve(name, node.level, node.module)
                for alias in node.names:
                    if f"{target}.{alias.name}" in MODULES:
                        module_aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("kanlib") and alias.asname:
                        module_aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses "
                                f"{module_aliases[node.value.id]}.{node.attr}")
    assert not offences, "\n".join(offences)


def test_the_library_does_not_import_the_publishing_tools():
    library = [name for name in MODULES if not name.startswith("kanlib.book") and name != "kanlib.__main__"]
    offences = [f"{name} imports {target}" for name in library for target in dependencies(name)
                if target.startswith("kanlib.book")]
    assert not offences, "\n".join(offences)


def test_import_kanlib_loads_none_of_the_book_libraries():
    script = ("import sys, kanlib; "
              f"print(','.join(m for m in {BOOK_LIBRARIES!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "", f"import kanlib loaded: {done.stdout.strip()}"


def test_no_library_module_loads_the_book_libraries():
    library = sorted(n for n in MODULES if not n.startswith("kanlib.book") and n != "kanlib.__main__")
    # what the library's own dependencies load (numba loads yaml) is theirs, not kanlib's
    script = (f"import importlib, sys\nfor name in {LIBRARY_DEPENDENCIES!r}:\n    importlib.import_module(name)\n"
              f"before = set(sys.modules)\nfor name in {library!r}:\n    importlib.import_module(name)\n"
              f"print(','.join(m for m in {BOOK_LIBRARIES!r} if m in sys.modules and m not in before))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"the library modules loaded: {done.stdout.strip()}"
