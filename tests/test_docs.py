"""The README's promises: two quickstart commands, the second run verbatim by CI."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quickstart_commands():
    text = (REPO / "README.rst").read_text()
    section = text.split("Quickstart\n==========", 1)[1].split("\n=", 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith("    ") and line.strip()]


def test_quickstart_has_exactly_two_commands():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert commands[0].endswith("sever train -c experiments/demo.yml")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert quickstart_commands()[1] in ci.splitlines()


def test_layout_promised_by_the_design_card():
    for path in ("sever/cli/app.py", "sever/experiment.py", "sever/model/base.py", "sever/trainer/base.py", "sever/data_loader",
                 "sever/model", "sever/trainer", "sever/utils", "experiments/config.yml", "experiments/demo.yml",
                 "data/README.md", "saved", "tests", "environment.yml", "setup.py", "pyproject.toml", "LICENSE",
                 "download.sh", "README.rst", "benchmarks"):
        assert (REPO / path).exists(), path


def test_readme_is_valid_restructuredtext():
    import docutils.core

    docutils.core.publish_string((REPO / "README.rst").read_text(), writer="null",
                                 settings_overrides={"report_level": 2, "halt_level": 2})
