"""check_output_path: the one check behind --capture, --flow-log and CaptureFile.open."""

from __future__ import annotations

import os

import pytest

from netwrap.errors import UsageError
from netwrap.linux.outputs import check_output_path


@pytest.mark.parametrize("path, regular_file, message", [
    ("", True, "--out: empty path"),
    ("/nonexistent-netwrap-dir/x", True, "--out /nonexistent-netwrap-dir/x: directory /nonexistent-netwrap-dir does not exist"),
    ("/", True, "--out /: is a directory"),
    ("/", False, "--out /: is a directory"),
    ("/dev/null", True, "--out /dev/null: not a regular file"),
])
def test_refusals_are_one_line_naming_the_flag(path, regular_file, message):
    with pytest.raises(UsageError) as info:
        check_output_path(path, label="--out", regular_file=regular_file)
    assert str(info.value) == message


def test_accepts_a_new_file_without_creating_it(tmp_path):
    check_output_path(str(tmp_path / "new.jsonl"), label="--out")
    assert os.listdir(tmp_path) == []


def test_accepts_an_existing_regular_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text("kept")
    check_output_path(str(path), label="--out")
    assert path.read_text() == "kept"


def test_a_writable_device_is_fine_only_where_regular_files_are_not_required():
    check_output_path("/dev/null", label="--out", regular_file=False)
    with pytest.raises(UsageError, match="not a regular file"):
        check_output_path("/dev/null", label="--out")
