"""``sever label-issues STUDY``: a hand-made study whose labels were corrupted after its
out-of-fold maps were drawn from the real masks; the command lists the corrupted labels first with
their kinds, writes the CSV and the gallery, and refuses bad inputs with one line.
"""

import json
import re

from click.testing import CliRunner
from label_studies import corrupted_study  # noqa: F401 (fixture)

from sever.cli.app import cli
from sever.inference.label_issues import read_issues_csv


def test_label_issues_lists_the_corrupted_labels_first(corrupted_study, tmp_path):
    paths, planted = corrupted_study
    result = CliRunner().invoke(cli, ["label-issues", str(paths.root), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = read_issues_csv(tmp_path / "out" / "label_issues.csv")
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    names = {f"class {c + 1}": c for c in range(4)}
    found = {(row["image"], names[row["class"]]): row["kind"] for row in rows}
    for key, kind in planted.items():
        assert found[key].startswith(kind), (key, found.get(key))
    wrong = next(key for key, kind in planted.items() if kind == "wrong class")
    assert found[wrong] == f"wrong class (predicted class {(wrong[1] - 1) % 4 + 1})"
    suspects = list(dict.fromkeys(row["image"] for row in rows))
    assert set(suspects[:3]) == {image for image, _ in planted}  # the three corrupted images first

    page = (tmp_path / "out" / "gallery.html").read_text()
    records = json.loads(re.search(r"id='records'>(.*?)</script>", page).group(1))
    assert [r["name"] for r in records] == suspects and [r["rank"] for r in records] == list(range(len(records)))
    first = records[0]
    assert all((tmp_path / "out" / r["thumb"]).is_file() for r in records)
    assert [error[:2] for error in first["errors"]] == [
        [row["kind"].split(" (")[0], names[row["class"]]] for row in rows if row["image"] == first["name"]]
    assert "<option value='wrong class'>" in page and "<option value='rank'>" in page
    assert "<option value='poor outline'>" in page


def test_default_output_is_inside_the_study_and_max_images_caps_the_gallery(corrupted_study):
    paths, _ = corrupted_study
    result = CliRunner().invoke(cli, ["label-issues", str(paths.root), "--max-images", "2"])
    assert result.exit_code == 0, result.output
    folder = paths.root / "label_issues"
    assert (folder / "label_issues.csv").is_file()
    page = (folder / "gallery.html").read_text()
    assert len(json.loads(re.search(r"id='records'>(.*?)</script>", page).group(1))) == 2
    assert len(list((folder / "gallery").iterdir())) == 2


def _refused(args) -> str:
    result = CliRunner().invoke(cli, ["label-issues", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a SeverError, not a crash
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_bad_inputs_get_one_line(corrupted_study, tmp_path):
    paths, _ = corrupted_study
    assert "no such folder" in _refused([str(tmp_path / "nowhere")])
    assert "not a study" in _refused([str(paths.fold_dir(0))])  # a run folder, not a study
    for oof in paths.oof_dir(1).iterdir():
        oof.unlink()
    paths.oof_dir(1).rmdir()
    assert "fold 1 has no out-of-fold probabilities" in _refused([str(paths.root)])
