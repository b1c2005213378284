"""The import direction of STYLE's house shape, checked over every import statement in src/zsnr (those inside
functions too: a lazy import is still an import). Reading the files takes milliseconds; nothing is imported."""

import ast
import pathlib
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src"

# Top-level packages Lightning arrives as.
LIGHTNING = {"pytorch_lightning", "lightning", "lightning_fabric"}

# Layers, lowest first: a package imports itself and lower layers, never a higher layer, and the packages of one
# layer are independent of each other.
LAYERS = [
    ["zsnr.diffusion"],
    ["zsnr.models", "zsnr.data"],
    ["zsnr.sampling", "zsnr.diffusers_interop", "zsnr.comfyui"],
    ["zsnr.export", "zsnr.single_file", "zsnr.audit", "zsnr.training"],
    ["zsnr.evaluation"],
    ["zsnr.train", "zsnr.experiments"],  # what a user runs: a training run; the demo and `make paper`
]
# What a module may import beyond its own layer's rules, each with its reason.
ALLOWED_UPWARD = {
    # export audits the folder it has written (python -m zsnr.audit, run in-process)
    ("zsnr.export", "zsnr.audit"),
}
# The experiments (the demo and `make paper`) sit on top of the metrics; a metric never imports one.
EXPERIMENTS = "zsnr.experiments"
# Sampling, export, the single file, the audit and the checkpoint reader work without Lightning installed.
WITHOUT_LIGHTNING = [
    "zsnr.sampling",
    "zsnr.diffusers_interop",
    "zsnr.comfyui",
    "zsnr.export",
    "zsnr.single_file",
    "zsnr.audit",
    "zsnr.models.checkpoint",
]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted((SRC / "zsnr").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module `name` imports, anywhere in its file: zsnr modules by full name, others by package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    out = set()
    for target in found:
        if target.split(".")[0] != "zsnr":
            out.add(target.split(".")[0])
            continue
        while target not in MODULES:
            target = target.rpartition(".")[0]
        out.add(target)
    return out - {name}


GRAPH = {name: _imports(name) for name in MODULES}


def _package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def _layer(name: str) -> int | None:
    for i, members in enumerate(LAYERS):
        if _package(name) in members:
            return i
    return None


def _reach(start: str) -> set[str]:
    """What importing `start` imports, transitively; importing a.b.c runs a/__init__ and a/b/__init__ first."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH.get(name, ()))
            todo.extend(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))
    return seen


def test_every_package_has_a_layer():
    missing = sorted({_package(n) for n in MODULES if n != "zsnr" and _layer(n) is None})
    assert not missing, f"add {missing} to LAYERS in {__file__}"


def test_no_import_cycles():
    """Tarjan's strongly connected components of the module graph; each one with two or more is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v] & MODULES.keys():
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while not component or v not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for name, targets in GRAPH.items():
        for target in targets & MODULES.keys():
            mine, theirs = _layer(name), _layer(target)
            if None in (mine, theirs) or (_package(name), _package(target)) in ALLOWED_UPWARD:
                continue
            same_package = _package(name) == _package(target)
            if theirs > mine or (theirs == mine and not same_package):
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layers (" + " < ".join(map("|".join, LAYERS)) + f"): {wrong}"


def test_diffusion_imports_torch_and_the_standard_library_only():
    # the report command's figure is the one optional extra, imported inside plot()
    allowed = set(sys.stdlib_module_names) | {"torch", "__future__"}
    extra = {"zsnr.diffusion.report": {"matplotlib"}}
    wrong = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _package(name) == "zsnr.diffusion"
        for target in targets
        if not (target.startswith("zsnr.diffusion") or target in allowed or target in extra.get(name, ()))
    ]
    assert not wrong, wrong


def test_metrics_never_import_an_experiment():
    wrong = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if _package(name) == "zsnr.evaluation"
        for target in targets
        if _package(target) == EXPERIMENTS
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("part", WITHOUT_LIGHTNING)
def test_sampling_export_audit_and_checkpoint_reading_without_lightning(part):
    for start in [n for n in MODULES if n == part or n.startswith(part + ".")]:
        reached = _reach(start)
        lightning = sorted(reached & LIGHTNING)
        assert not lightning, (
            f"{start} pulls in {lightning}, through {sorted(n for n in reached if n in MODULES)}"
        )
