"""The package's architecture, checked from its source with ``ast``.

- Folders in dependency order: each imports only the layers below it, and nothing imports in
  a circle. Only ``integration/`` and ``harness/`` import SGLang.
- Every string contract (flag, quant method, backend and class names, environment variables)
  is spelled once, in ``names.py``.
- Benchmarks share ``benchmarks/_*.py`` helpers and never import one another; tests share
  ``tests/helpers.py`` and put nothing on ``sys.path`` themselves.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from breccia_sglang import names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "breccia_sglang"

# The layer of each folder (or top-level module), lowest first, and what each may import.
LAYERS = {
    "names": set(), "errors": set(),
    "format": {"names", "errors"},
    "kvcache": {"names", "errors"},
    "weights": {"names", "errors", "format"},
    "kernels": {"names", "errors", "kvcache", "weights"},
    "integration": {"names", "errors", "format", "kvcache", "weights", "kernels"},
    "harness": {"names", "errors", "format", "kvcache", "weights", "kernels", "integration"},
    "cli": {"names", "errors", "format", "kvcache", "weights", "kernels", "integration", "harness"},
}
MAY_IMPORT_SGLANG = {"integration", "harness"}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, package: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, lazy ones inside functions too;
    ``from X import name`` counts as X.name when that is a module of the package."""
    this = module_name(path, package)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this.split(".")[: len(this.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                as_module = (package.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or \
                    (package.parent / candidate.replace(".", "/") / "__init__.py").exists()
                found.append((candidate if as_module else module, node.lineno))
    return found


def layer_of(module: str, package_name: str) -> str | None:
    parts = module.split(".")
    if parts[0] != package_name or len(parts) == 1:
        return None  # outside the package, or its root (imported by every import of a submodule)
    return parts[1]


def layer_violations(package: Path) -> list[str]:
    problems, graph = [], {}
    for path in sorted(package.rglob("*.py")):
        this = module_name(path, package)
        layer = layer_of(this, package.name)
        deps = imports_of(path, package)
        graph[this] = {m for m, _ in deps if m.split(".")[0] == package.name}
        for module, line in deps:
            where = f"{path.relative_to(package.parent)}:{line}"
            if module.split(".")[0] == "sglang" and layer not in MAY_IMPORT_SGLANG:
                problems.append(f"{where}: imports {module} (only {sorted(MAY_IMPORT_SGLANG)} touch SGLang)")
            target = layer_of(module, package.name)
            if layer is not None and target is not None and target != layer and target not in LAYERS[layer]:
                problems.append(f"{where}: {layer}/ imports {module}, a layer it may not use")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that is on one (depth-first search)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_every_layer_imports_only_the_layers_below_it_and_nothing_imports_in_a_circle():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} | {
        p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} == set(LAYERS)
    assert layer_violations(PACKAGE) == []


def test_the_checker_catches_a_planted_sglang_import_a_layer_breach_and_a_cycle(tmp_path):
    copy = tmp_path / PACKAGE.name
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    reader = copy / "format" / "reader.py"
    reader.write_text(reader.read_text() + "\nimport sglang.srt.server_args\n")
    paged = copy / "kvcache" / "paged_tensor.py"
    paged.write_text(paged.read_text() + "\nfrom ..kernels import launch\n")
    launch = copy / "kernels" / "launch.py"
    launch.write_text(launch.read_text() + "\nfrom ..kvcache import paged_tensor\n")
    problems = layer_violations(copy)
    assert any("format/reader.py" in p and "imports sglang.srt.server_args" in p for p in problems), problems
    assert any("kvcache/ imports breccia_sglang.kernels.launch" in p for p in problems), problems
    assert any(p.startswith("import cycle:") and "breccia_sglang.kernels.launch" in p for p in problems), problems


# --- string contracts ---------------------------------------------------------------------

CONTRACTS = {name: value for name, value in vars(names).items() if name.isupper() and isinstance(value, str)}


def literals(path: Path):
    """(line, text) of every string literal that is not a docstring, f-string parts included."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def spelled_contract(text: str) -> list[str]:
    """The contracts a literal spells. The quant method's value is the plain word "breccia",
    which is also a package name and a label in reports: that one is found where SGLang reads
    it (``quant_method_spellings``). Kernel names ("emulated", "sglang-fp8") are words inside
    other names too: spelled when a literal is exactly one. The rest wherever they stand."""
    return [name for name, value in CONTRACTS.items() if name != "QUANT_METHOD"
            and (text == value if name.startswith("GEMM_") else value in text)]


QUANT_KEYS = {"quantization", "quant_method"}


def quant_method_spellings(path: Path) -> list[int]:
    """Lines where the literal quant method is given to, or compared with, a quantization setting:
    ``quantization="breccia"``, ``{"quant_method": "breccia"}``, ``x.quantization == "breccia"``."""
    def is_value(node):
        return isinstance(node, ast.Constant) and node.value == names.QUANT_METHOD

    def is_setting(node):
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else \
            node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
        return name in QUANT_KEYS

    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.keyword) and node.arg in QUANT_KEYS and is_value(node.value):
            lines.append(node.value.lineno)
        elif isinstance(node, ast.Dict):
            lines += [v.lineno for k, v in zip(node.keys, node.values) if k is not None and is_setting(k) and is_value(v)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_value(n) for n in sides) and any(is_setting(n) or isinstance(n, ast.Call) for n in sides):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign) and is_value(node.value) and any(is_setting(t) for t in node.targets):
            lines.append(node.lineno)
    return lines


def test_each_string_contract_is_spelled_once_in_names_py():
    sources = [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "names.py"]
    sources += sorted((ROOT / "benchmarks").glob("*.py"))
    spelled = [f"{p.relative_to(ROOT)}:{line}: {found} {text!r}"
               for p in sources for line, text in literals(p) for found in spelled_contract(text)]
    spelled += [f"{p.relative_to(ROOT)}:{line}: QUANT_METHOD" for p in sources for line in quant_method_spellings(p)]
    assert spelled == []
    # Each contract is defined in names.py exactly once.
    defined = [t.id for node in ast.parse((PACKAGE / "names.py").read_text()).body if isinstance(node, ast.Assign)
               for t in node.targets if isinstance(t, ast.Name)]
    assert sorted(defined) == sorted(set(defined)) and set(CONTRACTS) <= set(defined)


def test_a_spelled_contract_would_be_found(tmp_path):
    assert spelled_contract("run with --breccia-format here") == ["FLAG"]
    assert spelled_contract(f"set {names.ENV_FP8_KV}=0") == ["ENV_FP8_KV"]
    assert spelled_contract("triton-block-fp8") == ["GEMM_TRITON_BLOCK_FP8"] and spelled_contract("emulated x") == []
    planted = tmp_path / "planted.py"
    planted.write_text('engine(quantization="breccia")\nconfig = {"quant_method": "breccia"}\n'
                       'if args.quantization != "breccia": pass\nlabel = "breccia"\n')
    assert sorted(quant_method_spellings(planted)) == [1, 2, 3]


# --- benchmarks and tests --------------------------------------------------------------------

def test_no_benchmark_imports_another_benchmark():
    benchmarks = ROOT / "benchmarks"
    scripts = {p.stem for p in benchmarks.glob("*.py") if not p.stem.startswith("_")}
    assert {"bench_decode", "compile_kernels"} <= scripts
    offending = []
    for path in sorted(benchmarks.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            offending += [f"{path.name}: {m}" for m in modules if m.split(".")[0] in scripts]
    assert offending == []


@pytest.mark.parametrize("pattern", ["from conftest import", "import conftest", "sys.path.insert", "sys.path.append"])
def test_tests_share_helpers_not_conftest_or_sys_path(pattern):
    this = Path(__file__).name
    hits = [f"{p.relative_to(ROOT)}" for p in sorted((ROOT / "tests").rglob("*.py"))
            if p.name != this and pattern in p.read_text()]
    assert hits == []


def test_one_op_has_one_name_across_kernels_tests_and_benchmarks():
    for op in ("decode",):
        assert (PACKAGE / "kernels" / "attention" / f"{op}.py").exists()
        assert (ROOT / "tests" / "kernels" / f"test_{op}.py").exists()
        assert (ROOT / "benchmarks" / f"bench_{op}.py").exists()
    for op in ("write_kv", "extend", "fp8_codec"):
        assert (PACKAGE / "kernels" / "attention" / f"{op}.py").exists()
        assert (ROOT / "tests" / "kernels" / f"test_{op}.py").exists()


def test_each_folder_docstring_names_every_module_in_it():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        members = [p.name for p in init.parent.glob("*.py") if p.name != "__init__.py"]
        members += [f"{p.name}/" for p in init.parent.iterdir() if (p / "__init__.py").exists()]
        missing = [m for m in members if f"``{m}``" not in doc]
        assert missing == [], f"{init.relative_to(ROOT)} does not describe {missing}"
