"""Output paths checked before the work that writes them (sever/utils/paths.py)."""

import pytest

from sever.exceptions import ConfigError
from sever.utils.paths import check_output_path


def test_a_new_path_under_folders_to_be_made_is_accepted_and_nothing_is_created(tmp_path):
    assert check_output_path(tmp_path / "a" / "b" / "mine.yml", "-o") == tmp_path / "a" / "b" / "mine.yml"
    assert check_output_path(tmp_path / "study", "-o", folder=True) == tmp_path / "study"
    assert list(tmp_path.iterdir()) == []


def test_a_file_on_the_way_or_the_wrong_kind_of_output_is_refused(tmp_path):
    (tmp_path / "a_file.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=r"-o .*mine.yml: cannot write it: .*a_file.txt is a file, not a folder"):
        check_output_path(tmp_path / "a_file.txt" / "deeper" / "mine.yml", "-o")
    with pytest.raises(ConfigError, match="a folder is there, not a file"):
        check_output_path(tmp_path / "folder", "-o")
    with pytest.raises(ConfigError, match="a file is there, not a folder"):
        check_output_path(tmp_path / "a_file.txt", "--out", folder=True)
    assert check_output_path(tmp_path / "a_file.txt", "-o") == tmp_path / "a_file.txt"  # overwritten, as before
