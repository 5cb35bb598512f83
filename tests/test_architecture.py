"""The package's imports follow the data flow (image -> model -> selector -> localizer -> heatmap ->
metrics/report): no module imports one above it, and no two modules import each other, directly or in a ring.

Every import counts, the ones inside functions too: a lazy import hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import protomdm

PACKAGE = Path(protomdm.__file__).parent

# Layers, lowest first; a module may import its own layer and those below. The key is the module's first name
# under protomdm (a subpackage or a top-level module); the package root re-exports the public API, so it is on top.
LAYERS = [
    {"errors", "version", "config", "files", "geometry", "device", "distributed", "runtime", "runfolder",
     "registry"},  # shared foundations
    {"data"},  # image
    {"models"},  # model
    {"explain"},  # selector -> localizer -> heatmap
    {"report"},  # figures, file names, DICOM outputs
    {"evaluation"},  # metrics and the runner
    {"training", "integrations"},  # training stages (push localizes); other codebases' models
    {"jobs", "cli", ""},  # the jobs behind the commands, the command line, the package's face
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, mod: str, is_package: bool = False) -> set[str]:
    """The protomdm modules that module ``mod`` (its ``source``) imports; ``from . import x`` counts as the module
    ``pkg.x`` when there is one."""
    pkg = mod if is_package else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("protomdm"):
                continue
            for alias in node.names:  # `from . import metrics` imports the module protomdm.<pkg>.metrics
                sub = f"{target}.{alias.name}"
                out.add(sub if _exists(sub) else target)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("protomdm")}
    out.discard(mod)
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def layer(module: str) -> int:
    key = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if key in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p.read_text(), module_name(p), p.name == "__init__.py")
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_imports_one_above_it_in_the_flow():
    upward = [f"{m} -> {t}" for m, ts in graph().items() for t in sorted(ts) if layer(t) > layer(m)]
    assert not upward, "imports against the data flow:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_walker_sees_lazy_and_relative_imports():
    source = "from . import metrics\nfrom ..explain.mdm import x\ndef f():\n    from protomdm.cli import main\n"
    found = imports(source, "protomdm.evaluation.runner")
    assert found == {"protomdm.evaluation.metrics", "protomdm.explain.mdm", "protomdm.cli"}
    assert layer("protomdm.cli") > layer("protomdm.evaluation.runner") > layer("protomdm.explain.mdm")


def test_the_tests_mirror_the_package():
    """tests/<subpackage>/test_*.py for each subpackage's tests (the package-wide ones at the top); a test module
    imports another test module only from its own folder (shared helpers live in conftest.py and beside it)."""
    tests = Path(__file__).resolve().parent
    for f in tests.rglob("test_*.py"):
        folder = f.parent.relative_to(tests)
        assert folder == Path(".") or (PACKAGE / folder / "__init__.py").is_file(), f"{f}: no protomdm.{folder}"
        for name in re.findall(r"^\s*(?:from|import) (test_\w+)", f.read_text(), re.M):
            assert (f.parent / f"{name}.py").is_file(), f"{f} imports {name} from another folder"


def test_the_command_line_starts_without_torchvision(tmp_path):
    """torchvision and TorchDynamo (which torchvision, and initialising weights on the meta device, import) take 1.7-1.8
    s to import: ``protomdm --help`` took 4.7 s here, and each command paid it again loading its checkpoint. The
    command line and a tiny model's checkpoint load without either."""
    from conftest import tiny_model

    from protomdm.models import save_checkpoint

    ckpt = save_checkpoint(tiny_model(), tmp_path / "m.pt")
    code = ("import sys, protomdm.cli, protomdm; protomdm.load_model(sys.argv[1]); "
            "print([m for m in ('torchvision', 'torch._dynamo') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
