"""The package's layers, as tests: consumers never import stages, only the orchestration layer imports
Airflow, and only the catalog spells keys."""
import ast
from pathlib import Path

import pytest

from emotion_pipeline.core import catalog

PACKAGE = Path(__file__).resolve().parents[2] / "emotion_pipeline"
# Modules that read stage outputs without being stages: they go through the catalog, never stages/.
CONSUMERS = ["modeling", "serve", "reporting", "core/catalog.py", "core/registry.py", "core/results.py"]
FOLDERS = {catalog.RESIZE_FOLDER, catalog.ANNOTATE_FOLDER, catalog.DEDUPE_FOLDER, catalog.EMBED_FOLDER,
           catalog.MERGE_FOLDER, catalog.DRIFT_FOLDER, catalog.GOLD_FOLDER, catalog.TRAIN_FOLDER,
           catalog.EVALUATE_FOLDER, catalog.MLFLOW_FOLDER, catalog.PROCESSED_FOLDER, catalog.MANIFEST_FOLDER,
           catalog.REVIEWS_FOLDER}
FILE_NAMES = {v.rsplit("/", 1)[-1] for k, v in vars(catalog).items() if k.isupper() and isinstance(v, str) and "." in v}


def python_files(*parts: str, package: Path = PACKAGE) -> list[Path]:
    files = []
    for part in parts:
        path = package / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def imports_of(path: Path, package: Path = PACKAGE) -> list[str]:
    """Every module ``path`` imports, resolved to absolute names (relative imports included)."""
    dotted = ".".join(path.relative_to(package.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = dotted.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


def key_literals(path: Path) -> list[str]:
    """String literals (docstrings aside) that spell a storage key: ``<stage folder>/...``,
    ``<folder>/shard=...`` or one of the catalog's file names."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if any(text.startswith(f"{folder}/") for folder in FOLDERS) or text.rpartition("/")[2] in FILE_NAMES:
                found.append(text)
    return found


@pytest.mark.parametrize("path", python_files(*CONSUMERS), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_consumers_do_not_import_stages(path):
    assert not [m for m in imports_of(path) if m.startswith("emotion_pipeline.stages")]


# Airflow is imported by the orchestration layer (the DAG builder, alerts, fail-fast) and by local/,
# which starts and drives Airflow on this machine (and by dags/): stages, models and the API never.
AIRFLOW_LAYERS = ("orchestration", "local")


WITHOUT_AIRFLOW = [p for p in python_files(".") if p.relative_to(PACKAGE).parts[0] not in AIRFLOW_LAYERS]


@pytest.mark.parametrize("path", WITHOUT_AIRFLOW, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_orchestration_layer_imports_airflow(path):
    assert not [m for m in imports_of(path) if m.split(".")[0] == "airflow"]


OUTSIDE_THE_CATALOG = [p for p in python_files(".") if p.name != "catalog.py"] + sorted(
    (PACKAGE.parent / "dags").glob("*.py"))


@pytest.mark.parametrize("path", OUTSIDE_THE_CATALOG, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_storage_key_is_spelled_outside_the_catalog(path):
    assert key_literals(path) == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The two checks above fail on the code this project had before the catalog."""
    package = tmp_path / "emotion_pipeline"
    (package / "modeling").mkdir(parents=True)
    module = package / "modeling" / "data.py"
    module.write_text('"""doc: datasets/x is fine here."""\nfrom ..stages.merge import DATASET_KEY\n'
                      'KEY = "datasets/final_emotion_dataset"\nDONE = f"features/_done.json"\n'
                      'CHART = f"monitoring/charts/shard={1:05d}.png"\nDB = "mlflow.db"\n'
                      'PAGE = f"reports/{2}/report.html"\nMETRICS = "metrics.json"\n')
    assert "emotion_pipeline.stages.merge" in imports_of(module, package)
    assert sorted(key_literals(module)) == ["/report.html", "datasets/final_emotion_dataset",
                                            "features/_done.json", "metrics.json", "mlflow.db",
                                            "monitoring/charts/shard=", "reports/"]
