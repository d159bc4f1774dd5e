"""The package's shape, as tests: short functions, stages that share code through the layers below
them (never by importing each other), and one home for the exception classes."""
import ast
from pathlib import Path

import pytest

from tests.core.test_layering import PACKAGE, imports_of, python_files

MAX_FUNCTION_LINES = 50  # from ``def`` to the last line, docstring included
ERRORS_MODULE = "core/errors.py"


def long_functions(path: Path) -> list[str]:
    """``name (n lines)`` of every function or method of ``path`` longer than ``MAX_FUNCTION_LINES``."""
    return [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def other_stages_imported(path: Path, package: Path = PACKAGE) -> list[str]:
    """The modules of ``stages/`` other than itself that ``path`` (a module of ``stages/``) imports."""
    stages = f"{package.name}.stages"
    itself = f"{stages}.{path.stem}"
    return sorted({m for m in imports_of(path, package) if m.startswith(f"{stages}.")
                   and m != itself and not m.startswith(f"{itself}.")})


def exception_classes(path: Path) -> list[str]:
    """Classes of ``path`` that derive from an exception (a base named ``*Error`` or ``*Exception``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            bases = [base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases]
            if any(name.endswith(("Error", "Exception")) for name in bases):
                found.append(node.name)
    return found


def relative(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


@pytest.mark.parametrize("path", python_files("."), ids=relative)
def test_no_function_is_longer_than_50_lines(path):
    assert long_functions(path) == [], f"split them into functions that do one thing each (<= {MAX_FUNCTION_LINES})"


@pytest.mark.parametrize("path", python_files("stages"), ids=relative)
def test_a_stage_does_not_import_another_stage(path):
    """Code two stages share lives below them (``core``, ``labelling``, ``modeling``), where the other
    consumers of stage outputs (the API, the dashboard, the report) can use it too."""
    assert other_stages_imported(path) == []


@pytest.mark.parametrize("path", [p for p in python_files(".") if relative(p) != ERRORS_MODULE], ids=relative)
def test_exception_classes_live_in_core_errors(path):
    assert exception_classes(path) == [], f"define them in {ERRORS_MODULE} (and import them here)"


def test_the_checks_catch_what_they_are_for(tmp_path):
    package = tmp_path / "emotion_pipeline"
    (package / "stages").mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    module = package / "stages" / "evaluate.py"
    module.write_text(f"from .embed import input_of\nfrom emotion_pipeline.stages import check_gold\n"
                      f"from emotion_pipeline.core import runner\nimport emotion_pipeline.stages.evaluate\n\n\n"
                      f"class Gone(RuntimeError):\n    pass\n\n\nclass Fine:\n    pass\n\n\n"
                      f"def short():\n{body}\n\n\ndef long():\n{body}\n    x = 0\n")
    assert long_functions(module) == [f"long ({MAX_FUNCTION_LINES + 1} lines)"]
    assert other_stages_imported(module, package) == ["emotion_pipeline.stages.check_gold",
                                                      "emotion_pipeline.stages.embed",
                                                      "emotion_pipeline.stages.embed.input_of"]
    assert exception_classes(module) == ["Gone"]
