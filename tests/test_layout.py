"""The tests mirror the package: each module of sever has tests/<package>/test_<module>.py, the test folders are
plain folders, test files import helpers and never each other, and tools/mutation.py names files that exist."""

import ast
import importlib.util

from conftest import REPO

TESTS = REPO / "tests"

# Modules without a test file of their own name, and where their behaviour is tested meanwhile.
# Give a module its file rather than a line here.
ELSEWHERE = {
    "sever/cli/data.py": "demo-data, check-data, convert: tests/cli/test_app.py, tests/data_loader/test_checks.py, "
                         "tests/data_loader/test_convert.py",
    "sever/cli/publishing.py": "export, upload: tests/test_export.py, tests/test_upload.py",
    "sever/api/results.py": "tests/api/test_model.py, tests/test_public_api.py (what predict returns)",
    "sever/exceptions.py": "every error message a test matches",
    "sever/model/base.py": "tests/model/test_model.py",
    "sever/model/detection.py": "tests/detection/test_trainer.py",
    "sever/utils/device.py": "tests/planning/test_plan.py",
    "sever/utils/registry.py": "tests/test_registries.py, tests/utils/test_config.py",
    "sever/planning/experiment_file.py": "tests/planning/test_plan.py (the written file and its reasons)",
    "sever/planning/policy.py": "tests/planning/test_rules.py, tests/planning/test_plan.py",
    "sever/planning/probe.py": "tests/planning/test_plan.py (the device target and the step probe)",
    "sever/planning/sizing.py": "tests/planning/test_plan.py, tests/planning/test_rules.py",
    "sever/study/rounds.py": "tests/study/test_study.py, tests/inference/test_pseudo_label.py (pseudo-label rounds)",
}


def mirrored(module: str) -> str:
    """``sever/pkg/mod.py`` -> ``tests/pkg/test_mod.py``; ``sever/mod.py`` -> ``tests/test_mod.py``."""
    package, _, name = module.removeprefix("sever/").rpartition("/")
    return "/".join(part for part in ("tests", package, f"test_{name}") if part)


def modules() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "sever").rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py"))


def test_mirrored_names():
    assert mirrored("sever/inference/predictor.py") == "tests/inference/test_predictor.py"
    assert mirrored("sever/experiment.py") == "tests/test_experiment.py"


def test_every_module_has_a_test_file_of_its_name():
    missing = [m for m in modules() if not (REPO / mirrored(m)).is_file() and m not in ELSEWHERE]
    assert not missing, ("modules without tests/<package>/test_<module>.py (add the file, or list the module in "
                         f"ELSEWHERE with where its tests are): {missing}")
    stale = [m for m in ELSEWHERE if not (REPO / m).is_file() or (REPO / mirrored(m)).is_file()]
    assert not stale, f"ELSEWHERE lists modules that are gone or now have their own file: {stale}"


def test_test_folders_are_plain_folders_and_test_files_import_no_other_test_file():
    assert not list(TESTS.rglob("__init__.py")), "pytest's importlib mode needs no __init__.py in tests/"
    for path in TESTS.rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {name for name in imported if name.startswith("test_")}, (
            f"{path.relative_to(REPO)} imports a test file: move what it shares to a helper module in tests/")


def test_the_mutation_tools_map_names_modules_and_tests_that_exist():
    spec = importlib.util.spec_from_file_location("mutation_tool", REPO / "tools" / "mutation.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for module, tests in tool.MODULES.items():
        assert (REPO / module).is_file(), module
        for test in tests:
            path, _, name = test.partition("::")
            assert (REPO / path).is_file(), test
            if name:
                functions = {node.name for node in ast.parse((REPO / path).read_text()).body
                             if isinstance(node, ast.FunctionDef)}
                assert name in functions, test
