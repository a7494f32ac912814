"""The package's layout follows the pipeline: stage packages import only from earlier
stages, modules and functions stay small, and errors live in errors.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "multimag"

#: stage of each top-level part; a module may import only from its own stage or an earlier one
STAGES = {"errors": 0, "atomic": 0, "config": 0, "tables": 0, "__init__": 0,
          "wsi": 1, "dataset": 2, "learn": 3, "evaluate": 4}
#: parts outside the pipeline's order, with what they may import
ISOLATED = {"demo": {"errors", "atomic", "__init__", "demo"}}
ANYTHING = {"cli"}  # the command line wires every stage together
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_MARK = "# Long:"  # a comment line directly above a def that says why it is longer


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def part_of(dotted: str) -> str:
    """``multimag.wsi.slide`` -> ``wsi``; ``multimag`` -> ``__init__``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, dotted: str) -> list[tuple[int, str]]:
    """Every multimag module that the module ``dotted`` (file ``path``) imports,
    relative imports resolved, with its line."""
    package = dotted if path.name == "__init__.py" else dotted.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, target))
    return [(line, name) for line, name in found
            if name == "multimag" or name.startswith("multimag.")]


def upward_imports(path: Path, dotted: str) -> list[str]:
    own = part_of(dotted)
    if own in ANYTHING:
        return []
    bad = []
    for line, target in imported_modules(path, dotted):
        other = part_of(target)
        if own in ISOLATED:
            allowed = other in ISOLATED[own]
        elif other in ISOLATED or other in ANYTHING:
            allowed = False
        else:
            allowed = STAGES[other] <= STAGES[own]
        if not allowed:
            bad.append(f"{dotted}:{line} imports {target}")
    return bad


def test_every_part_has_a_stage():
    parts = {part_of(module_name(p)) for p in modules()}
    assert parts <= set(STAGES) | set(ISOLATED) | ANYTHING, parts - set(STAGES)


def test_no_module_imports_from_a_later_stage():
    bad = [b for p in modules() for b in upward_imports(p, module_name(p))]
    assert not bad, "\n".join(bad)


def test_the_check_sees_upward_and_relative_imports(tmp_path):
    """The walk above can fail: later stages, the demo and the CLI are caught,
    written absolute or relative; earlier stages and the module's own are not."""
    probe = tmp_path / "probe.py"
    probe.write_text("from multimag.learn import data\nfrom ..evaluate.plots import x\n"
                     "import multimag.cli\nfrom multimag.demo import cohort\n"
                     "from multimag.wsi import geometry\nfrom . import labels\n"
                     "from multimag.errors import MultimagError\n")
    bad = upward_imports(probe, "multimag.dataset.probe")
    assert [b.split(" imports ")[1] for b in bad] == [
        "multimag.learn", "multimag.evaluate.plots", "multimag.cli", "multimag.demo"]
    assert upward_imports(probe, "multimag.cli") == []
    from_demo = upward_imports(probe, "multimag.demo.probe")  # only errors, atomic, demo
    assert [b.split(" imports ")[1] for b in from_demo] == [
        "multimag.learn", "multimag.evaluate.plots", "multimag.cli", "multimag.wsi"]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{len(lines)} lines"
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            size = node.end_lineno - node.lineno + 1
            marked = first >= 2 and lines[first - 2].strip().startswith(LONG_MARK)
            if size > MAX_FUNCTION_LINES and not marked:
                long.append(f"{node.name} ({size} lines)")
    assert not long, ", ".join(long)


def test_exception_classes_live_in_errors_py():
    outside = []
    for path in modules():
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Warning",
                                                                      "Exception"))
                    for b in node.bases):
                outside.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert not outside, outside
