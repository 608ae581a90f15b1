"""Fine-tuning refuses values that cannot train and an unwritable output folder before it reads any data,
as pre-training does (tests/tasks/test_pretrain_errors.py)."""

from __future__ import annotations

import pytest

from pri3d.cli import main


@pytest.mark.parametrize("task", ["semseg", "insseg"])
def test_a_bad_training_value_is_a_one_line_error_before_any_data_is_read(task, tmp_path, capsys):
    """insseg's batch scaling divided by train.batch_size=0 (a ZeroDivisionError traceback)."""
    log_dir = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                task,
                f"dataset.path={tmp_path / 'absent'}",
                f"train.log_dir={log_dir}",
                "train.batch_size=0",
            ]
        )
        == 1
    )
    assert capsys.readouterr().err == "pri3d finetune: error: train.batch_size=0: expected an integer ≥ 1\n"
    assert not log_dir.exists()


@pytest.mark.parametrize("task", ["semseg", "insseg"])
def test_an_output_folder_that_cannot_be_written_stops_before_any_data_is_read(task, tmp_path, capsys):
    (tmp_path / "file").write_text("a regular file, not a folder")
    log_dir = tmp_path / "file" / "run"
    assert main(["finetune", task, f"dataset.path={tmp_path / 'absent'}", f"train.log_dir={log_dir}"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"pri3d finetune: error: train.log_dir={log_dir}: cannot create the folder")
    assert error.count("\n") == 1 and "absent" not in error
