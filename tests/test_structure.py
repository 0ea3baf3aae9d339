"""The shape of the code: imports flow one way, and no file or function outgrows a reader.

Read with ``ast`` from the sources (nothing is imported), so a forbidden
import fails here even when it sits inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple


REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "datasets", "utils")
PLUGINS = ("models", "datasets", "utils.losses", "utils.transforms")
MAX_FILE_LINES, MAX_FUNCTION_LINES, MAX_TRAIN_LINES = 700, 60, 300


def source_files(repo: Path = REPO, include_tests: bool = True) -> List[Path]:
    roots = [*PACKAGES, "bench", *(["tests"] if include_tests else [])]
    files = [repo / "train.py", repo / "test.py"]
    for root in roots:
        files += sorted((repo / root).rglob("*.py"))
    return files


def module_name(path: Path, repo: Path = REPO) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, repo: Path = REPO) -> Iterator[str]:
    """Every module ``path`` imports, at the top or inside a function, as a dotted name."""
    name = module_name(path, repo)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def project_graph(repo: Path = REPO, include_tests: bool = False) -> Dict[str, Set[str]]:
    """Module -> the project modules it imports (a package import counts as its ``__init__``)."""
    modules = {module_name(p, repo): p for p in source_files(repo, include_tests)}
    return {name: {target for target in imported_modules(path, repo) if target in modules and target != name}
            for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules, or [] (depth-first search with colours)."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert find_cycle(project_graph()) == []


def forbidden_imports(repo: Path = REPO) -> List[Tuple[str, str, str]]:
    """(module, import, rule) for every import that runs against the flow."""
    found = []
    graph = project_graph(repo, include_tests=True)
    for module, targets in graph.items():
        top = module.split(".")[0]
        for target in targets:
            if top in PACKAGES and target in ("train", "test"):
                found.append((module, target, "library code never imports an entry point"))
            if module == "test" and target == "train":
                found.append((module, target, "test.py does not import train.py"))
            if module == "utils.config" and any(target == p or target.startswith(p + ".") for p in PLUGINS):
                found.append((module, target, "the config layer imports no plugin package"))
            if top != "tests" and target.split(".")[0] == "tests":
                found.append((module, target, "nothing outside tests/ imports tests/"))
    return found


def test_imports_flow_one_way() -> None:
    assert forbidden_imports() == []


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """A fake tree breaking each rule once is caught (the checks above could otherwise pass vacuously)."""
    files = {"train.py": "", "test.py": "import train\n", "models/__init__.py": "from train import main\n",
             "datasets/__init__.py": "", "utils/__init__.py": "", "utils/config.py": "import models\n",
             "utils/losses.py": "", "utils/transforms.py": "", "bench/b.py": "from tests.conftest import x\n",
             "tests/conftest.py": ""}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    rules = sorted(rule for _, _, rule in forbidden_imports(tmp_path))
    assert find_cycle(project_graph(tmp_path)) == []
    assert rules == sorted(["test.py does not import train.py", "library code never imports an entry point",
                            "the config layer imports no plugin package", "nothing outside tests/ imports tests/"])


def test_no_file_or_function_outgrows_a_reader() -> None:
    too_long = []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        limit = MAX_TRAIN_LINES if path.name == "train.py" and path.parent == REPO else MAX_FILE_LINES
        if lines > limit:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines (at most {limit})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []
