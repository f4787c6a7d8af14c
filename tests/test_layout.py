"""The house's shape, checked: imports point one way (storage and cluster never import pipeline; a
later phase imports earlier ones, never the reverse; nothing imports the CLI), there is no import
circle, modules and functions stay readable, and the catalog and image commands never load a deep
learning framework. Read from the source with ``ast`` (imports inside functions count too); the
last test runs the real commands in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "cluster", "storage")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 100

# Who may import whom: a module may import modules of a lower rank, and of its own phase.
SHARED = ("pipeline", "pipeline.errors", "pipeline.validate", "pipeline.stage", "pipeline.figures")
RANKS = {
    "storage": 0,
    "cluster": 1,
    "pipeline (shared)": 2,  # the modules of SHARED
    "pipeline.catalog": 3,
    "pipeline.images": 4,
    "pipeline.learn": 5,
    "pipeline.score": 6,
    "pipeline.synthetic": 7,  # the offline sky: only run, config and the CLI may import it
    "pipeline.config": 8,
    "pipeline.run": 9, "pipeline.bench": 9,
    "pipeline.cli": 10,
}  # fmt: skip


def modules() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def phase(module: str) -> str:
    """The longest key of RANKS that ``module`` is, or lies inside."""
    if module in SHARED:
        return "pipeline (shared)"
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} belongs to no phase of RANKS; add it there")


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a.b import c`` counts a.b.c when that is a
    module), anywhere in the file but under ``if TYPE_CHECKING:`` (no import at run time)."""
    tree = ast.parse(path.read_text())
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skipped = {id(n) for node in guarded for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                      for a in node.names}  # fmt: skip
    return {m for m in found if m in known}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_imports_point_one_way(graph):
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            mine, theirs = phase(module), phase(target)
            if theirs == "pipeline.cli" and mine != "pipeline.cli":
                wrong.append(f"{module} imports {target}: nothing imports the CLI")
            elif mine != theirs and RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs}), a later or parallel phase")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle(graph):
    """Tarjan's strongly connected components: every one must be a single module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("folder", [*PACKAGES, "benchmarks"])
def test_modules_and_functions_stay_readable(folder):
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_layering_rules_see_a_wrong_import(tmp_path):
    """The checks above would notice an import back up (and read nested imports)."""
    path = tmp_path / "late.py"
    path.write_text("def f():\n    from pipeline.learn.train import train\n")
    known = set(modules())
    assert imports(path, known) == {"pipeline.learn.train"}
    assert RANKS[phase("pipeline.learn.train")] > RANKS[phase("pipeline.catalog.label")]


CATALOG_AND_IMAGES = textwrap.dedent(
    """
    import sys
    import threading
    from pipeline.cli import main
    from pipeline.synthetic.server import serve_in_background
    from pipeline.synthetic.server_config import build_server_config

    out = sys.argv[1]
    for command in ([], ["ingest"], ["label"], ["fetch"], ["sky", "make"]):
        try:
            main([*command, "--help"])
        except SystemExit:
            pass
    assert main(["--quiet", "--workers", "1", "sky", "make", "--n", "300", "--out", out + "/sky"]) == 0
    assert main(["--quiet", "--workers", "1", "ingest", out + "/sky/nsa_sky.fits", "-w", out + "/ws"]) == 0
    assert main(["--quiet", "--workers", "1", "label", "-w", out + "/ws", "--no-plots"]) == 0
    with serve_in_background(build_server_config(None, catalog=(out + "/sky/nsa_sky.fits",))) as server:
        code = main(["--quiet", "--workers", "1", "fetch", "-w", out + "/ws", "--cutout-url", server.url,
                     "--image-size", "32", "--rate", "500"])
    assert code == 0, code
    print(sorted(m for m in ("keras", "tensorflow", "jax") if m in sys.modules))
    """
)


def test_catalog_and_image_commands_never_load_a_deep_learning_framework(tmp_path):
    """`--help`, `sky make`, `ingest`, `label` and `fetch`, run for real in one fresh interpreter,
    leave TensorFlow, Keras and JAX unimported (seconds and hundreds of MB each)."""
    done = subprocess.run([sys.executable, "-c", CATALOG_AND_IMAGES, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=280)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
