"""Heavy libraries load only where they are used, and imports keep docs/architecture.md's module
map: cli -> study/export/dashboards -> runner -> searcher/trial/data -> space/storage/spec -> errors,
with no import cycle among hpo's modules."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import small_spec

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "transformers", "datasets", "nltk", "sacrebleu")
LIGHT = (
    "hpo.cli",
    "hpo.climodel",
    "hpo.spec",
    "hpo.specsections",
    "hpo.specdata",
    "hpo.specfile",
    "hpo.textmetrics",
    "hpo.space",
    "hpo.storage",
    "hpo.storageurl",
    "hpo.data",
    "hpo.formats",
    "hpo.cleaning",
    "hpo.packing",
    "hpo.params",
    "hpo.export",
    "hpo.summary",
    "hpo.study",
    "hpo.gcpause",
    "hpo.memory",
    "hpo.models",
    "hpo.modelbuild",
    "hpo.raystart",
    "hpo.resources",
    "hpo.trainable",
    "hpo.collective",
    "hpo.trialsetup",
    "hpo.trialstep",
    "hpo.evaluation",
    "hpo.trialmemory",
    "hpo.faultinject",
    "hpo.bookkeeping",
    "hpo.admission",
    "hpo.recovery",
    "hpo.budget",
    "hpo.priorstudy",
    "hpo.objectives",
    "hpo.confirmed",
    "hpo.confirm",
    "hpo.curves",
    "hpo.pasha",
    "hpo.replay",
    "hpo.cqr",
)

# the module map of docs/architecture.md as layers: a module imports from its own layer or below
LAYERS = {
    "errors": 0,
    "gcpause": 0,
    "models": 1,
    "specsections": 1,
    "specdata": 1,
    "specfile": 1,
    "textmetrics": 1,
    "dataparams": 1,
    "dataspace": 1,
    "spec": 1,
    "params": 1,
    "space": 1,
    "storageurl": 1,
    "storage": 1,
    "summary": 1,
    "objectives": 1,
    "confirmed": 1,
    "placement": 1,
    "cudafault": 1,
    "memory": 1,
    "budget": 1,
    "priorstudy": 1,
    "cqr": 1,
    "basemodel": 2,
    "modelbuild": 2,
    "data": 2,
    "formats": 2,
    "cleaning": 2,
    "packing": 2,
    "augment": 2,
    "paraphrase": 2,
    "mixture": 2,
    "dataplan": 2,
    "datawrite": 2,
    "lmhead": 2,
    "dropout": 2,
    "checkpoint": 2,
    "bestweights": 2,
    "collective": 2,
    "distributed": 2,
    "trialsetup": 2,
    "evaluation": 2,
    "generation": 2,
    "trialmemory": 2,
    "faultinject": 2,
    "trial": 2,
    "trialstep": 2,
    "warmstart": 2,
    "cudaprobe": 2,
    "bookkeeping": 2,
    "recovery": 2,
    "searcher": 2,
    "admission": 2,
    "pasha": 1,
    "curves": 2,
    "replay": 2,
    "schedulers": 2,
    "strategies": 2,
    "raystart": 3,
    "resources": 3,
    "trainable": 3,
    "runner": 3,
    "study": 4,
    "confirm": 4,
    "export": 4,
    "display": 4,
    "progress": 4,
    "dashboards": 4,
    "cli": 5,
    "climodel": 5,
}
RAY_ALLOWED = {
    "hpo/runner.py",
    "hpo/raystart.py",
    "hpo/resources.py",
    "hpo/trainable.py",
    "hpo/searcher.py",
    "hpo/schedulers.py",  # the spec's schedule as a Ray Tune scheduler (run and replay)
    "hpo/strategies.py",  # the replay's strategies drive Ray Tune's schedulers and OptunaSearch
}
TORCH_ALLOWED = {
    "hpo/data.py",
    "hpo/paraphrase.py",
    "hpo/formats.py",
    "hpo/trial.py",
    "hpo/checkpoint.py",
    "hpo/bestweights.py",
    "hpo/lmhead.py",
    "hpo/dropout.py",
    "hpo/basemodel.py",
    "hpo/modelbuild.py",
    "hpo/distributed.py",
    "hpo/collective.py",
    "hpo/trialsetup.py",
    "hpo/trialstep.py",
    "hpo/evaluation.py",
    "hpo/generation.py",
    "hpo/trialmemory.py",
    "hpo/faultinject.py",
    "hpo/warmstart.py",
    "hpo/cudaprobe.py",  # torch.cuda.is_initialized, inside the function
    "hpo/export.py",  # only to cast weights to another dtype (hpo export --dtype), inside the function
}  # inside functions in data.py


def _loaded(code: str) -> list[str]:
    check = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return ast.literal_eval(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_load_nothing_heavy(module):
    assert _loaded(f"import {module}") == []


def test_all_light_modules_together_and_the_package():
    assert _loaded("import hpo, " + ", ".join(LIGHT)) == []


def test_help_runs_and_shows_an_example():
    r = subprocess.run([sys.executable, "-m", "hpo.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "Example" in r.stdout and "study" in r.stdout


def test_study_create_loads_neither_torch_nor_ray(tmp_path):
    spec = small_spec(tmp_path)
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
        "from hpo.cli import main\n"
        f"main(['study', 'create', {str(spec)!r}, '--storage', {url!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "created study 'small'" in r.stdout
    assert "HEAVY []" in r.stdout


def test_study_create_finds_a_hub_model_in_the_local_cache_without_torch(tmp_path):
    """A Hub id is looked up in the Hugging Face cache (huggingface_hub, light), not loaded."""
    snapshot = tmp_path / "hf" / "models--org--model" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    for name in ("tokenizer.json", "model.safetensors"):
        (snapshot / name).write_text("{}")
    (snapshot / "config.json").write_text('{"attention_dropout": 0.0}')  # the spec searches dropout
    spec = small_spec(tmp_path, model="org/model")
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
        "from hpo.cli import main\n"
        f"main(['study', 'create', {str(spec)!r}, '--storage', {url!r}])\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    assert f"model org/model: in the Hugging Face cache ({snapshot})" in r.stderr


# ---------------------------------------------------------------- the module map, from the source


def _sources() -> list[Path]:
    return sorted([*(ROOT / "hpo").glob("*.py"), *(ROOT / "dashboards").glob("*.py")])


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import in the file, function-level ones included,
    except those under ``if TYPE_CHECKING:`` (types only, never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("hpo", "dashboards"):  # from hpo import storage -> hpo.storage
                out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return out


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "dashboards":
        return "dashboards"
    if parts[0] == "hpo" and len(parts) > 1:
        return parts[1]
    return None


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_nothing_imports_the_cli():
    bad = [
        f"{_where(p)}:{line}"
        for p in _sources()
        for mod, line in _imports(p)
        if mod == "hpo.cli" and p.name != "cli.py"
    ]
    assert not bad, f"only the console script enters hpo.cli: {bad}"


def test_only_the_cli_imports_dashboards():
    bad = [
        f"{_where(p)}:{line}"
        for p in _sources()
        if p.parent.name == "hpo" and p.name != "cli.py"
        for mod, line in _imports(p)
        if mod.split(".")[0] == "dashboards"
    ]
    assert not bad, f"dashboards are reached through the CLI only: {bad}"


def test_only_the_run_and_the_searcher_import_ray():
    bad = [
        f"{_where(p)}:{line}"
        for p in _sources()
        if _where(p) not in RAY_ALLOWED
        for mod, line in _imports(p)
        if mod.split(".")[0] == "ray"
    ]
    assert not bad, f"ray belongs to the run (runner, raystart, resources, trainable) and searcher.py: {bad}"


def test_torch_and_transformers_only_where_models_are_touched():
    bad = [
        f"{_where(p)}:{line} ({mod})"
        for p in _sources()
        if _where(p) not in TORCH_ALLOWED
        for mod, line in _imports(p)
        if mod.split(".")[0] in ("torch", "transformers", "datasets")
    ]
    assert not bad, f"torch/transformers/datasets belong to data.py, trial.py, basemodel.py: {bad}"


def test_imports_flow_down_the_module_map():
    unknown, upward = [], []
    for p in _sources():
        if p.name == "__init__.py":
            continue  # package facades re-export lazily (``from hpo import create_study``)
        me = "dashboards" if p.parent.name == "dashboards" else p.stem
        if me not in LAYERS:
            unknown.append(_where(p))
            continue
        for mod, line in _imports(p):
            other = _layer_of(mod)
            if other is None or other == me:
                continue
            if other not in LAYERS:
                continue  # reported when that module itself is scanned
            if LAYERS[other] > LAYERS[me]:
                upward.append(f"{_where(p)}:{line} imports {mod}")
    assert not unknown, f"add these to docs/architecture.md's module map and to LAYERS here: {unknown}"
    assert not upward, f"imports must flow down the module map (docs/architecture.md): {upward}"


def _hpo_module(name: str) -> str | None:
    """``hpo.x`` (or ``hpo.x.y``) -> ``x`` when hpo/x.py exists; ``hpo`` itself -> ``__init__``."""
    parts = name.split(".")
    if parts[0] != "hpo":
        return None
    if len(parts) > 1 and (ROOT / "hpo" / f"{parts[1]}.py").exists():
        return parts[1]
    return "__init__"  # ``from hpo import create_study``: the package's facade


def _import_graph() -> dict[str, set[str]]:
    """hpo's modules -> the hpo modules each imports, function-level imports included."""
    graph: dict[str, set[str]] = {}
    for p in sorted((ROOT / "hpo").glob("*.py")):
        targets = {_hpo_module(mod) for mod, _ in _imports(p)}
        graph[p.stem] = {t for t in targets if t is not None and t != p.stem}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) through each strongly connected part of
    ``graph`` that has more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_a_cycle(graph, sorted(part)) for part in parts]


def _a_cycle(graph: dict[str, set[str]], part: list[str]) -> list[str]:
    """A path from ``part[0]`` back to itself inside ``part`` (breadth first: the shortest)."""
    start, inside = part[0], set(part)
    paths = [[start]]
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & inside):
            if w == start:
                return [*path, start]
            if w not in path:
                paths.append([*path, w])
    return part


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_among_hpo_modules():
    """A cycle, even through an import inside a function, means two modules are one idea split
    in two, or a lower module reaching up: move what both need below them."""
    graph = _import_graph()
    assert "trial" in graph["trainable"]  # the graph sees function-level imports
    cycles = [" -> ".join(c) for c in _cycles(graph)]
    assert not cycles, f"import cycles among hpo modules: {cycles}"
