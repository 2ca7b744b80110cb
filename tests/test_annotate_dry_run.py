"""`alframe round import --dry-run` reports the counts the import would leave (issue 18)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_annotate_support import assignments, make_project, state_digest, write_mask_folder

from alframe.annotate import import_labels, open_project
from alframe.cli.main import main


def _pending(printed: str) -> int:
    match = re.search(r"; (\d+) items (?:would still be|still) pending", printed)
    assert match, printed
    return int(match.group(1))


def test_dry_run_counts_pending_as_after_the_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(tmp_path, budget=4)
    given = assignments(project)
    alice = {item: ["alice"] for item, names in given.items() if "alice" in names}
    assert 0 < len(alice) < len(given)
    masks = write_mask_folder(project, tmp_path / "alice", alice)
    capsys.readouterr()

    before = state_digest(project)
    argv = ["round", "import", str(project), "--from", str(masks), "--annotator", "alice"]
    assert main([*argv, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert state_digest(project) == before  # a dry run commits nothing
    assert f"would import {len(alice)} new" in dry
    assert "would still be pending" in dry
    assert _pending(dry) == len(given) - len(alice)

    assert main(argv) == 0
    done = capsys.readouterr().out
    assert "still pending" in done and "would" not in done
    assert _pending(done) == _pending(dry)

    # Importing the same masks again as a dry run: nothing new, the count is unchanged.
    with open_project(project) as opened:
        report = import_labels(opened, masks, annotator="alice", dry_run=True)
    assert not report.new and report.pending == len(given) - len(alice)
