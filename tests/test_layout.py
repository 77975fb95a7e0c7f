"""The code's shape, checked statically: dvc.yaml deps cover what each stage imports, the flows' paths are
dvc.yaml's, uniadc_core imports downwards only, and no module outgrows a file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "uniadc_core")
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())

# uniadc_core's layers, lowest first: a module may import its own layer and those below it
LAYERS = [
    {"config", "io", "decoding", "device", "metrics", "decision"},
    {"data"},
    {"weights"},
    {"synthesis", "model"},
    {"cada"},
    {"serving", "runtime"},
    {"evaluation", "export"},
    {"tracking"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
# synthesis and model share a layer but must not import each other: training reads shards, not synthesizers
APART = {("model", "synthesis"), ("synthesis", "model")}


def _module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(path: Path) -> set[str]:
    """Project modules a file imports, at the top or inside functions (both run when the stage runs)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def import_closure(module: str) -> set[Path]:
    """Every project file that running ``module`` imports (packages' __init__ files included)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += _imports(path)
    return seen


@pytest.mark.parametrize("stage", sorted(DVC["stages"]))
def test_dvc_deps_cover_every_file_the_stage_imports(stage):
    spec = DVC["stages"][stage]
    module = spec["cmd"].removeprefix("python -m ")
    deps = [ROOT / d for d in spec["deps"]]
    missing = sorted(str(p.relative_to(ROOT)) for p in import_closure(module)
                     if not any(p == d or d in p.parents for d in deps))
    assert not missing, f"dvc.yaml stage '{stage}' misses code it imports; add to its deps: {missing}"
    # and every code dep is something the stage runs (a folder: at least one file of it)
    closure = import_closure(module)
    unused = [str(d.relative_to(ROOT)) for d in deps if d.parts[len(ROOT.parts)] in PACKAGES
              and not any(p == d or d in p.parents for p in closure)]
    assert not unused, f"dvc.yaml stage '{stage}' lists code it does not import: {unused}"


def test_the_flows_paths_are_the_ones_dvc_yaml_uses():
    from flows.layout import Layout

    layout = Layout.at(".")
    named = {str(getattr(layout, k)) for k in ("raw", "manifest", "vocabulary", "synthetic", "discriminator", "cada")}
    stages = DVC["stages"]
    outs = {next(iter(o)) if isinstance(o, dict) else o for s in stages.values() for o in s.get("outs", [])}
    metrics = {next(iter(m)) for m in stages["evaluate"]["metrics"]}
    assert named <= outs, sorted(named - outs)
    assert str(layout.reports / "metrics.json") in metrics
    assert all(str(layout.reports) in o for o in outs if "reports" in o)
    assert {str(layout.discriminator.parent), str(layout.cada.parent)} == {str(layout.models)}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "uniadc_core" and len(parts) > 1 else None


def test_uniadc_core_imports_downwards_only_and_no_orchestration():
    wrong = []
    for path in sorted((ROOT / "uniadc_core").rglob("*.py")):
        rel = path.relative_to(ROOT)
        here = rel.parts[1].removesuffix(".py") if len(rel.parts) > 1 else None
        if here == "__init__":
            continue
        tree = ast.parse(path.read_text())
        third_party = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        third_party |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if third_party & {"prefect", "dvc", "flows", "tasks"}:
            wrong.append(f"{rel} imports {sorted(third_party & {'prefect', 'dvc', 'flows', 'tasks'})}")
        if "mlflow" in third_party and rel.parts[1] != "tracking":
            wrong.append(f"{rel} imports mlflow outside uniadc_core/tracking")
        for module in _imports(path):
            there = _layer(module)
            if there is None or there == here or there not in RANK or here not in RANK:
                continue
            if RANK[there] > RANK[here] or (here, there) in APART:
                wrong.append(f"{rel} imports {module} ({there} is not below {here})")
    assert not wrong, "\n".join(wrong)


def test_every_layer_is_named_and_modules_stay_small():
    names = {p.stem if p.is_file() else p.name for p in (ROOT / "uniadc_core").iterdir()
             if p.name != "__pycache__" and p.name != "__init__.py"}
    assert names == set(RANK), f"layers and uniadc_core differ: {sorted(names ^ set(RANK))}"
    big = [f"{p.relative_to(ROOT)}: {n} lines" for package in PACKAGES for p in (ROOT / package).rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 400]
    assert not big, big
