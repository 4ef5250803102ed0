"""The layout docs/architecture.md describes holds: no import cycles, no path patching, no private names
imported across modules, modules small enough to read in one sitting."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("bort", "data")


def _modules():
    """{dotted module name: path} of every module in bort/ and data/."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
    return found


def _imports(path, modules):
    """(module imported, names imported from it) for every import statement, at any depth of the file."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield (submodule, None) if submodule in modules else (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {imported for imported, _ in _imports(path, modules)
                    if imported in modules and imported not in (name, "bort")}
             for name, path in modules.items()}
    assert _cycles(graph) == []


def test_a_cycle_is_found():
    """The checker itself: a two-module loop is reported."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_private_name_is_imported_across_modules():
    modules = _modules()
    offenders = [f"{name}: {imported}.{what}" for name, path in modules.items()
                 for imported, what in _imports(path, modules)
                 if imported in modules and what and what.startswith("_")]
    assert offenders == []


def _defined_names(path):
    """Names a module defines at its top level (functions, classes, assignments), not the ones it imports."""
    names = set()
    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def test_names_are_imported_from_the_module_that_defines_them():
    """No re-export facades: `from bort.x import name` only where bort/x.py defines `name`."""
    modules = _modules()
    defined = {name: _defined_names(path) for name, path in modules.items()}
    users = dict(modules)
    for folder in ("scripts", "benchmarks", "experiments", "tests"):
        for path in _tracked_python_files():
            if os.path.relpath(path, ROOT).startswith(folder + os.sep):
                users[os.path.relpath(path, ROOT)] = path
    for name in ("finetune_bort.py", "run_pretraining_distillation_hvd.py", "create_pretraining_data.py"):
        users[name] = os.path.join(ROOT, name)
    offenders = [f"{user}: {imported}.{what}" for user, path in users.items()
                 for imported, what in _imports(path, modules)
                 if imported in modules and what and what not in defined[imported]]
    assert offenders == []


def _tracked_python_files(suffixes=(".py",)):
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "build")]
        for name in files:
            if name.endswith(suffixes):
                yield os.path.join(folder, name)


def test_nothing_patches_the_import_path():
    """The checkout is installed (pyproject.toml): no Python file or launcher sets sys.path or PYTHONPATH."""
    pattern = re.compile(r"sys\.path\.(insert|append)|sys\.path\s*=|PYTHONPATH")
    this = os.path.abspath(__file__)
    offenders = [os.path.relpath(p, ROOT) for p in _tracked_python_files((".py", ".sh"))
                 if p != this and pattern.search(open(p, encoding="utf-8").read())]
    assert offenders == []


@pytest.mark.parametrize("package", PACKAGES + ("scripts", "benchmarks", "experiments"))
def test_modules_read_in_one_sitting(package):
    """About 400 lines at most (a little slack, so a docstring line does not break the build)."""
    folder = os.path.join(ROOT, package)
    long = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                lines = sum(1 for _ in open(path, encoding="utf-8"))
                if lines > 420:
                    long[os.path.relpath(path, ROOT)] = lines
    assert long == {}
