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
    assert "bench.run.runner" in graph and "bench.cli" in graph["bench.__main__"] | {"bench.cli"}
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


# The harness's layers, lowest first: data flows down them (a run's configuration, its data, the
# instruments that time and weigh, training, evaluation, running jobs, the results read back), and a module
# imports only from its own layer or lower ones. The entry points sit on top. ``bench`` itself (the
# package root, imported for its path) belongs to none.
LAYERS = (
    ("bench.config",),
    ("bench.data",),
    ("bench.instruments",),
    ("bench.train",),
    ("bench.evaluate",),
    ("bench.run",),
    ("bench.results",),
    ("bench.suite", "bench.api", "bench.cli", "bench.__main__"),
)


def layer_of(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def upward_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    found = {}
    for module, deps in graph.items():
        here = layer_of(module)
        up = sorted(d for d in deps if here is not None and (layer_of(d) or -1) > here)
        if up:
            found[module] = up
    return found


def test_the_layer_check_finds_a_planted_upward_import():
    graph = {"bench.train.trainer": {"bench.evaluate.metrics", "bench.config.job"}, "bench.evaluate.metrics": set(),
             "bench.config.job": set()}
    assert upward_imports(graph) == {"bench.train.trainer": ["bench.evaluate.metrics"]}
    assert upward_imports({"bench.results.tables": {"bench.config.job", "bench"}}) == {}


def test_every_harness_module_lies_in_a_layer():
    graph = import_graph()
    homeless = sorted(m for m in graph if m.startswith("bench.") and layer_of(m) is None)
    assert homeless == []


def test_lower_layers_never_import_upper_ones():
    """config -> data -> instruments -> train -> evaluate -> run -> results -> entry points: nothing points up."""
    assert upward_imports(import_graph()) == {}


FAMILY_FOLDERS = {"autoregressive": "autoregressive", "vae": "vae", "gan": "gan", "flow": "flows", "ebm": "ebm",
                  "diffusion": "diffusion"}
SHARED_MODEL_FILES = {"__init__.py", "base.py", "registry.py", "discretized_logistic.py", "ode.py", "unet.py",
                      "cuda_graphs.py"}


def test_every_model_file_lies_in_its_familys_folder():
    """Each registered model's class is defined in models/<its family's folder>/, and models/ holds nothing
    else at its top but the shared pieces."""
    import models

    misplaced = {}
    for name in models.names():
        cls = models.model_class(name)
        if not cls.__module__.startswith("models."):  # a plugin (GENBENCH_PLUGINS) lives where its author put it
            continue
        folder = FAMILY_FOLDERS.get(cls.family)
        if folder is None or not cls.__module__.startswith(f"models.{folder}."):
            misplaced[name] = (cls.family, cls.__module__)
    assert misplaced == {}
    loose = sorted(p.name for p in (ROOT / "models").glob("*.py") if p.name not in SHARED_MODEL_FILES)
    folders = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "__init__.py").exists())
    assert loose == [] and folders == sorted(FAMILY_FOLDERS.values())


def test_the_layout_page_names_every_module():
    """docs/layout.md is the tree: every module and folder of bench/ and models/ is named there."""
    layout = (ROOT / "docs" / "layout.md").read_text()
    names = set()
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts:
                names.add(p.name)
        names |= {f"{p.name}/" for p in (ROOT / pkg).rglob("*") if p.is_dir() and (p / "__init__.py").exists()}
    assert sorted(n for n in names if n not in layout) == []
