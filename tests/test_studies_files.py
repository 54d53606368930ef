"""Every shipped study file is runnable documentation: it validates and opens with a comment that
says what it tunes and the exact commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo import data, dataspace, spec

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


def test_there_are_study_files():
    assert STUDIES, "studies/*.yaml is empty"


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_file_validates_and_its_data_cleans(path):
    s = spec.load(path)
    report = data.check(s.data, s.seed, shown=dataspace.shown_values(s.space))  # as `hpo study create` does
    assert report["train"]["kept"] > 0


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_file_opens_with_a_comment_and_the_commands(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert header, f"{path.name} must open with a comment: what it tunes, what it needs, the commands"
    text = "\n".join(header)
    assert f"hpo study create studies/{path.name}" in text
    assert "hpo run" in text
