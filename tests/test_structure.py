"""The package's structure, checked as CI checks code: one folder per pipeline stage importing only the stages
below it (the import-linter contract in pyproject.toml), no import cycle between modules (function-local imports
included), and imports that ruff's ``I,F`` rules accept."""
import shutil
import subprocess
import sys

import grimp
from helpers import REPO


def test_every_stage_imports_only_the_stages_below_it():
    r = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                        "lint_imports_command()"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def _strongly_connected(adj: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (an import cycle each)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("saefw")  # every import statement, in functions too
    adj = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert _strongly_connected(adj) == []


def test_cycle_finder_finds_a_cycle():
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_sorted_and_no_unused_or_undefined_names():
    ruff = shutil.which("ruff") or str(REPO / ".ci-venv" / "bin" / "ruff")
    r = subprocess.run([ruff, "check", "saefw", "tests", "benchmarks", "plugins", "hydra_plugins"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
