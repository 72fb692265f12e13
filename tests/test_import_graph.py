"""No module of `bench/` or `models/` takes part in an import cycle.

The graph is computed from the source: every `import` and `from ... import` statement of the two
packages, at module level or inside a function (a function-level import that only hides a cycle is still
a cycle of responsibilities), restricted to modules of the two packages."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "models")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) - {module_name(p)} for p in files}
    # a package's __init__ importing its own submodules is how registration works, not a cycle
    for package in PACKAGES:
        graph[package] = {m for m in graph.get(package, set()) if not m.startswith(package + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_bench_or_models():
    graph = import_graph()
    assert "bench.runner" in graph and "bench.cli" in graph["bench.__main__"] | {"bench.cli"}
    assert cycles(graph) == []


def test_models_never_import_the_harness():
    graph = import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith("bench")) for m, deps in graph.items()
                 if m.startswith("models") and any(d.startswith("bench") for d in deps)}
    assert offenders == {}


def test_code_cites_no_file_outside_the_repository():
    """Design notes live in docs/; nothing under bench/, models/ or tests/ points outside the repository."""
    outside = ("DESIGN" + ".md", "shared/" + "docs")  # spelled apart so this file does not match itself
    offenders = [str(p.relative_to(ROOT)) for pkg in ("bench", "models", "tests") for p in (ROOT / pkg).rglob("*.py")
                 if any(name in p.read_text() for name in outside)]
    assert offenders == [] and (ROOT / "docs" / "design.md").is_file()


LOWER = ("bench.errors", "bench.paths", "bench.metrics", "bench.jobs", "bench.data", "bench.results", "bench.budgets",
         "bench.scaling_tables")
UPPER = ("bench.cli", "bench.api", "bench.suite", "bench.runner", "bench.evaluation", "bench.report", "bench.compare")


def test_lower_layers_never_import_upper_ones():
    """Data flows down (data -> train -> measure -> results -> report): the foundations import no runner,
    suite, CLI, report or compare module."""
    graph = import_graph()
    upward = {m: sorted(d for d in graph[m] if d.startswith(UPPER)) for m in LOWER if m in graph}
    assert {m: d for m, d in upward.items() if d} == {}


def test_the_readme_layout_names_every_module():
    """The README's layout section is the tree: every module of bench/ (and each subpackage) is named there."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    names = {p.name for p in (ROOT / "bench").glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    names |= {f"{p.name}/" for p in (ROOT / "bench").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert sorted(n for n in names if n not in layout) == []
