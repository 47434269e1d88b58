"""A notebook's own definitions, imported without running the notebook: only the statements that define the
names asked for, and those they need, execute, in a namespace of their own.

A name is found by what the notebook's code cells define, not by a cell's index, so that cells may move: its
definition is the first cell that binds it at the top level (a def, a class, an assignment, also inside an if),
and every statement of that cell that binds it runs (`ffn_dim = ...`, `if ...: ffn_dim = ...`, `ffn_dim = ...`
all do). The names a statement reads as it runs (not those inside a function's body) are defined first, the
same way, unless the caller gives them. Every import of the notebook runs first, since function bodies use
them. What the function bodies read at call time beyond that, the caller gives or asks for.
"""

import ast
import builtins
from pathlib import Path

import nbformat


class NotDefined(LookupError):
    """The notebook binds this name in no code cell."""

    def __init__(self, name: str, notebook: Path):
        super().__init__(f"{Path(notebook).name} defines no {name!r} in a code cell")
        self.name = name


def code_cells(notebook: Path) -> list:
    """Each code cell's top-level statements; a cell that is not plain Python (an IPython magic) is left out."""
    cells = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "code":
            try:
                cells.append(ast.parse(cell.source).body)
            except SyntaxError:
                continue
    return cells


def bound_names(node: ast.stmt) -> set:
    """The names a top-level statement binds (in a nested if, for, with or try too; not inside a def)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)}
    names = set()
    for field in ("body", "orelse", "finalbody", "handlers"):
        for child in getattr(node, field, []):
            names |= bound_names(child)
    return names


def read_names(node: ast.AST) -> set:
    """The names a statement reads as it runs: not those read inside the bodies of its defs and lambdas."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        parts = node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
        return set().union(*(read_names(part) for part in parts)) if parts else set()
    if isinstance(node, ast.Lambda):
        return set().union(*(read_names(d) for d in node.args.defaults)) if node.args.defaults else set()
    names = {node.id} if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) else set()
    for child in ast.iter_child_nodes(node):
        names |= read_names(child)
    return names


def notebook_definitions(notebook: Path, names, given: dict = None) -> dict:
    """{name: value} of the names asked for (and of what they needed), as the notebook defines them.
    given: names the caller provides instead (the notebook's params, say). NotDefined when a name is missing."""
    cells = code_cells(notebook)
    namespace = dict(given or {})
    for statement in (node for cell in cells for node in cell if isinstance(node, (ast.Import, ast.ImportFrom))):
        try:
            exec(compile(ast.Module(body=[statement], type_ignores=[]), str(notebook), "exec"), namespace)
        except ImportError:
            continue  # a module the asked-for definitions may not need
    pending = set()

    def define(name: str):
        if name in namespace or name in pending:
            return
        cell = next((cell for cell in cells if any(name in bound_names(node) for node in cell)), None)
        if cell is None:
            raise NotDefined(name, notebook)
        pending.add(name)
        statements = [node for node in cell if name in bound_names(node)]
        for needed in set().union(*(read_names(node) for node in statements)) - {name}:
            if not hasattr(builtins, needed):
                define(needed)
        exec(compile(ast.Module(body=statements, type_ignores=[]), str(notebook), "exec"), namespace)

    for name in names:
        define(name)
    return {name: namespace[name] for name in namespace if name != "__builtins__"}


def function_parameters(notebook_or_module: Path) -> dict:
    """{function name: [parameter names]} of the top-level functions of a notebook or a .py file, and of the
    methods of its classes (without self), as written: read from the source, nothing runs."""
    path = Path(notebook_or_module)
    cells = code_cells(path) if path.suffix == ".ipynb" else [ast.parse(path.read_text()).body]
    functions = {}
    for node in (node for cell in cells for node in cell):
        methods = [child for child in node.body if isinstance(child, ast.FunctionDef)] if isinstance(node, ast.ClassDef) else []
        for function in ([node] if isinstance(node, ast.FunctionDef) else []) + methods:
            parameters = [argument.arg for argument in function.args.posonlyargs + function.args.args
                          + function.args.kwonlyargs]
            functions.setdefault(function.name, parameters[1:] if function in methods else parameters)
    return functions
