"""The README's promises (two quickstart commands, the second run verbatim by CI), and the Sphinx site in docs/:
it builds without warnings and the examples its pages mark as tested run."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# ----------------------------------------------------------------------------- the Sphinx site

DOCS = REPO / "docs"
TESTED = ("tested", "tested-checkout")  # :class: of a block that runs, in a scratch folder / in the checkout


def test_docs_build_without_warnings(tmp_path):
    """``sphinx-build -W``: a broken reference, a docstring autodoc cannot parse, a config key without a
    meaning in docs/_ext/sever_docs.py or a guide outside the index fails the build."""
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                             str(tmp_path / "html")], capture_output=True, text=True, env=_environment())
    assert result.returncode == 0, result.stderr[-6000:]
    config_page = _page_text(tmp_path / "html" / "reference" / "config.html")
    for key in ("time_budget", "valid_overlap", "DefectDice", "pseudo_images"):  # generated from the schema
        assert key in config_page, key
    cli_page = _page_text(tmp_path / "html" / "reference" / "cli.html")
    assert "sever plan [OPTIONS] DATA_DIR" in cli_page and "sever auto [OPTIONS] [DATA_DIR]" in cli_page


def _page_text(path: Path) -> str:
    """An HTML page's text, without its tags."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


def code_blocks(path: Path) -> list[tuple[str, str, str]]:
    """``(language, class, text)`` of each ``.. code-block::`` of an RST file whose ``:class:`` is in TESTED."""
    blocks, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        match = re.match(r"(\s*)\.\. code-block:: (\w+)\s*$", lines[i])
        i += 1
        if not match:
            continue
        indent, options = len(match.group(1)) + 3, {}
        while i < len(lines) and re.match(r"\s+:(\w+):\s*(.*)", lines[i]):
            key, value = re.match(r"\s+:(\w+):\s*(.*)", lines[i]).groups()
            options[key] = value.strip()
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= indent):
            body.append(lines[i][indent:])
            i += 1
        if options.get("class") in TESTED:
            blocks.append((match.group(2), options["class"], "\n".join(body).strip() + "\n"))
    return blocks


def console_commands(text: str) -> list[str]:
    """The ``$ `` lines of a console block (continued by a trailing backslash); output lines are skipped."""
    commands, current = [], None
    for line in text.splitlines():
        if current is not None:
            current += "\n" + line
        elif line.startswith("$ "):
            current = line[2:]
        if current is not None and not current.endswith("\\"):
            commands.append(current)
            current = None
    return commands


def test_code_blocks_are_found(tmp_path):
    """The extractor itself: options, continued commands and output lines."""
    page = ("Title\n=====\n\n.. code-block:: console\n   :class: tested\n\n   $ echo one \\\n       two\n   one two\n"
            "   $ true\n\n.. code-block:: python\n\n   print('not tested')\n\n.. code-block:: python\n"
            "   :class: tested-checkout\n\n   x = 1\n\n   assert x == 1\n\nText.\n")
    path = tmp_path / "page.rst"
    path.write_text(page)
    blocks = code_blocks(path)
    assert [(language, kind) for language, kind, _ in blocks] == [("console", "tested"), ("python", "tested-checkout")]
    assert console_commands(blocks[0][2]) == ["echo one \\\n    two", "true"]
    assert blocks[1][2] == "x = 1\n\nassert x == 1\n"


def test_python_blocks_in_a_row_run_as_one_script(tmp_path):
    """A page's python blocks share their names until a console block (or another :class:) comes between."""
    page = ("T\n=\n\n.. code-block:: python\n   :class: tested\n\n   x = 1\n\n"
            ".. code-block:: python\n   :class: tested\n\n   assert x == 1\n\n"
            ".. code-block:: console\n   :class: tested\n\n   $ true\n\n"
            ".. code-block:: python\n   :class: tested\n\n   y = 2\n")
    path = tmp_path / "page.rst"
    path.write_text(page)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = page_script(path, tmp_path, scratch)
    assert sorted(file.name for file in scratch.iterdir()) == ["block0.py", "block2.py"]
    assert (scratch / "block0.py").read_text() == "x = 1\n\nassert x == 1\n"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


PAGES = sorted(DOCS.glob("guides/*.rst")) + [REPO / "README.rst"]


def test_every_guide_has_a_tested_example():
    untested = [page.name for page in DOCS.glob("guides/*.rst") if not code_blocks(page)]
    assert not untested, f"guides without a block marked :class: tested: {untested}"


def _environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _sever(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sever", *args], cwd=cwd, capture_output=True, text=True,
                            env=_environment())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory) -> Path:
    """A folder like a user's after the quickstart: the demo data and one tiny demo run in saved/demo/."""
    root = tmp_path_factory.mktemp("docs-workspace")
    _sever("train", "-c", "demo", "--set", "trainer.epochs=1", "--set", "trainer.max_steps_per_epoch=2",
           "--set", "trainer.report_images=0", cwd=root)
    return root


def script_steps(blocks: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The blocks with python blocks in a row (same ``:class:``) joined into one script, as a reader runs a
    page's examples in one session: a later block uses the names an earlier one made."""
    steps: list[tuple[str, str, str]] = []
    for language, kind, text in blocks:
        if language == "python" and steps and steps[-1][:2] == ("python", kind):
            steps[-1] = ("python", kind, steps[-1][2] + "\n" + text)
        else:
            steps.append((language, kind, text))
    return steps


def page_script(page: Path, workspace: Path, scratch: Path) -> str:
    """One bash script running the page's tested blocks in order (python blocks through files in ``scratch``)."""
    lines = ["set -euo pipefail"]
    for number, (language, kind, text) in enumerate(script_steps(code_blocks(page))):
        lines.append(f"cd {shlex.quote(str(REPO if kind == 'tested-checkout' else workspace))}")
        if language == "python":
            script = scratch / f"block{number}.py"
            script.write_text(text)
            lines.append(f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")
        else:
            lines.extend(console_commands(text))
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in PAGES if code_blocks(page)], ids=lambda page: page.name)
def test_examples_run(page, docs_workspace, tmp_path):
    """Every block marked tested runs, in the page's order, in a copy of the workspace; any failing command fails."""
    workspace = tmp_path / "workspace"
    shutil.copytree(docs_workspace, workspace, symlinks=True)
    (workspace / "benchmarks").symlink_to(REPO / "benchmarks")  # the checkout's scripts, as from its root
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = _environment()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # this venv's sever, python
    result = subprocess.run(["bash", "-c", page_script(page, workspace, scratch)], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, f"{page.name}: exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
