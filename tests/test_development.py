"""The "Adding a method" recipe of docs/development.md, followed with a solver defined here."""

import pytest
import torch
from omegaconf import OmegaConf

from pruning.pipeline import run_job
from pruning.solvers import SOLVERS, Solver
from pruning.solvers.common import SolverResult, check_pattern, relative_error
from tests.conftest import compose_cfg, tiny_overrides


def smallest_inputs(w, sparsity, *, H=None, sq_norms=None, scale: float = 1.0) -> SolverResult:
    """Prune, in every row, the weights of the inputs with the smallest norms (no update)."""
    check_pattern(w, sparsity)
    w = w.float()
    k = int(w.shape[1] * sparsity.ratio)
    cols = torch.argsort(sq_norms)[:k]
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[:, cols] = True
    out = torch.where(mask, torch.zeros_like(w), w * scale)
    return SolverResult(out, mask, relative_error(w, out, H))


def test_a_solver_registered_from_outside_runs_as_a_job_and_through_the_api(tiny_data_root, tmp_path, monkeypatch):
    monkeypatch.setitem(SOLVERS, "smallest_inputs", Solver(smallest_inputs, needs_hessian=False, needs_norms=True))
    cfg = compose_cfg(tiny_overrides("tiny-llama", tiny_data_root, "method=magnitude", "calibration.nsamples=4",
                                     "calibration.seqlen=32"))
    OmegaConf.update(cfg, "method", {"name": "smallest_inputs", "label": "smallest", "scale": 1.0}, merge=False)
    rec = run_job(cfg, tmp_path / "job")
    assert rec["status"] == "complete" and rec["method"]["label"] == "smallest"
    assert rec["sparsity"]["actual"] == 0.5 and all(r["rel_error"] > 0 for r in rec["layers"])

    OmegaConf.update(cfg, "method", {"name": "smallest_inputs", "scale": "big"}, merge=False)
    with pytest.raises(ValueError, match=r"method.scale='big': need a float"):  # knobs checked by their defaults
        run_job(cfg, tmp_path / "bad")

    from pruning import prune
    from pruning.models import load_model
    lm = load_model(compose_cfg(["model=tiny-llama"]).model)
    report = prune(lm.model, method="smallest_inputs", sparsity=0.5, calibration=torch.randint(0, 256, (4, 32)))
    assert report.actual["actual"] == 0.5


def test_the_development_guides_layout_lists_every_module_and_no_other():
    import re

    from tests.conftest import REPO
    guide = (REPO / "docs" / "development.md").read_text()
    layout = guide[guide.index("## Layout"):guide.index("## Tests\n")]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", layout, flags=re.M))
    tree = {p.relative_to(REPO).as_posix() for root in ("pruning", "experiments", "analysis")
            for p in (REPO / root).rglob("*.py") if p.name != "__init__.py" or p.parent.name == "solvers"}
    assert not tree - listed, f"modules missing from docs/development.md's layout: {sorted(tree - listed)}"
    assert not listed - tree, f"docs/development.md lists modules that do not exist: {sorted(listed - tree)}"


def _import_graph(repo, roots=("pruning", "experiments", "analysis")) -> dict[str, set[str]]:
    """module -> the project modules it imports, read from the source (imports inside functions count: an
    import moved into a function to dodge a circle is still a circle)."""
    import ast

    modules = {}
    for root in roots:
        for path in (repo / root).rglob("*.py"):
            parts = path.relative_to(repo).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
                edges |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_no_import_circle_anywhere():
    from tests.conftest import REPO
    graph = _import_graph(REPO)
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"
    assert "pruning" not in graph["pruning.results"]  # the version comes from pruning.version, not the package
