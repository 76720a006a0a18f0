"""Imports point down the layers DEVELOPERS.md declares, never up or sideways.

Every ``import`` and ``from ... import`` of every module under ``sever/`` is read with
``ast`` (imports inside functions too, where the CLI keeps its heavy ones), mapped to
its unit and compared with :data:`LAYERS`: a module may import its own unit and the
units of lower layers only. The failure lists each offending ``file:line``.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sever"

# Highest layer first; units in one layer are siblings that must not import each other.
LAYERS = (
    ("cli",),
    ("api",),
    ("experiment",),
    ("export", "upload", "report"),
    ("trainer", "inference", "planning"),
    ("model", "data_loader"),
    ("foundation",),
)
# Each module's unit is that of its longest listed prefix.
UNIT_OF = {
    **{f"sever.{unit}": unit for unit in ("cli", "api", "experiment", "export", "upload", "report", "trainer", "inference", "model",
                                          "data_loader")},
    "sever": "foundation",
    "sever.__main__": "cli",
    "sever.study": "foundation",  # the package's docstring only
    "sever.study.folder": "foundation",
    "sever.study.splits": "foundation",
    "sever.study.tuning": "inference",
    "sever.study.rounds": "experiment",
    "sever.study.folds": "experiment",
    "sever.study.final": "experiment",
    "sever.study.train": "experiment",
    "sever.study.auto": "experiment",
    "sever.planning": "planning",
    "sever.exceptions": "foundation",
    "sever.registries": "foundation",
    "sever.tasks": "foundation",
    "sever.utils": "foundation",
    "sever.detection": "foundation",  # the package's docstring only
    "sever.detection.data": "data_loader",
    "sever.detection.metric": "model",
    "sever.detection.trainer": "trainer",
    "sever.detection.predict": "inference",
    "sever.detection.from_masks": "inference",
}
RANK = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The unit of ``module``: that of its longest prefix in UNIT_OF."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in UNIT_OF:
            return UNIT_OF[".".join(parts[:end])]
    raise AssertionError(f"{module}: no unit")


def is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (REPO / relative).with_suffix(".py").is_file() or (REPO / relative / "__init__.py").is_file()


def imported_modules(node: ast.AST, importer: str) -> list[str]:
    """The sever modules one import statement reads (``from sever.x import y`` reads ``sever.x.y`` if it is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "sever"]
    if not isinstance(node, ast.ImportFrom):
        return []
    assert not node.level, f"{importer}:{node.lineno}: a relative import; sever imports absolutely"
    base = node.module
    if base.split(".")[0] != "sever":
        return []
    return [f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names]


def violations() -> list[tuple[str, str, str]]:
    """``(importer, imported, "file:line: ...")`` for each import against the layer order."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        source_unit = unit_of(importer)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in imported_modules(node, importer):
                target_unit = unit_of(target)
                if target_unit == source_unit or RANK[target_unit] > RANK[source_unit]:
                    continue
                direction = "up" if RANK[target_unit] < RANK[source_unit] else "sideways"
                found.append((importer, target, f"{path.relative_to(REPO)}:{node.lineno}: {importer} imports "
                                                f"{target} ({source_unit} -> {target_unit}, {direction})"))
    return sorted(set(found))


def test_every_module_has_a_declared_layer():
    for path in PACKAGE.rglob("*.py"):
        assert unit_of(module_name(path)) in RANK, path


def test_no_import_points_up_or_sideways():
    found = [line for _, _, line in violations()]
    assert not found, "imports against the layer order:\n" + "\n".join(found)


@pytest.mark.parametrize("importer, target, allowed", [
    ("sever.trainer.base", "sever.model.scheduler", True),
    ("sever.utils.checkpoint", "sever.model.model", False),
    ("sever.trainer.trainer", "sever.inference.checkpoints", False),
    ("sever.detection.trainer", "sever.detection.predict", False),
    ("sever.model.model", "sever.data_loader.datasets", False),
    ("sever.cli", "sever.detection.from_masks", True),
    ("sever.inference.checkpoints", "sever.study.folder", True),
    ("sever.data_loader.data_loaders", "sever.study.splits", True),
    ("sever.study.tuning", "sever.study.folds", False),
    ("sever.study.folder", "sever.study.tuning", False),
    ("sever.cli.prediction", "sever.api.model", True),
    ("sever.api.training", "sever.experiment", True),
    ("sever.api.model", "sever.inference.sources", True),
    ("sever.experiment", "sever.api.model", False),
    ("sever.inference.predictor", "sever.api.results", False),
])
def test_the_layer_order_judges_known_edges(importer, target, allowed):
    source, destination = unit_of(importer), unit_of(target)
    assert (source == destination or RANK[destination] > RANK[source]) is allowed
