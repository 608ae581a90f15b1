"""`pri3d demo --quick` runs the whole study end to end (every arm, both seeds, both read-outs), reports it
and resumes without rerunning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pri3d.cli import main
from pri3d.demo import cli as demo_cli
from pri3d.demo.cli import QUICK, STAGES
from pri3d.demo.report import findings, markdown
from pri3d.demo.study import ARMS, pretrain_dir
from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint


@pytest.mark.slow
def test_quick_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quick", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["preprocess"]["pairs"] > 0 and report["preprocess"]["frames"] > 0
    assert report["check geometry"]["matched_share_median"] > 0.2
    study = report[STAGES[3]]
    rows = {row["init"]: row for row in study["table"]}
    assert list(rows) == ["scratch", *(arm.name for arm in ARMS)]
    seeds = QUICK.study.pretrain_seeds
    runs_per_arm = len(seeds) * len(QUICK.study.seeds)
    for init, row in rows.items():  # every pre-training seed is fine-tuned and probed; scratch as often
        assert row["finetune"]["n"] == runs_per_arm and row["probe"]["n"] == len(seeds)
        assert all(0.0 <= r["miou"] <= 1.0 for r in row["finetune"]["runs"] + row["probe"]["runs"])
        assert sorted(r["pretrain_seed"] for r in row["probe"]["runs"]) == sorted(seeds)
        if init != "scratch":
            assert sorted(r["pretrain_seed"] for r in row["finetune"]["runs"]) == sorted(seeds)
            assert set(row["versus"]) == {"scratch", "MoCo"} - {init}
    for arm in ARMS:  # every pre-training ran its steps and left a checkpoint
        for seed in seeds:
            run = pretrain_dir(tmp_path / "runs", arm.name, seed)
            last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            assert last["step"] == QUICK.study.pretrain_steps, run.name
            assert (run / "checkpoints" / "last").is_file()
    moco = pretrain_dir(tmp_path / "runs", "MoCo", seeds[0]) / "checkpoints"
    assert list(moco.glob("checkpoint_*.pth.tar")), "MoCo's run wrote its file in MoCo's layout"
    for run in (tmp_path / "runs").iterdir():  # finished runs keep their weights, not the optimizer's state
        if run.name.startswith("probe_"):
            assert json.loads((run / "done.json").read_text())["feature_channels"] == 32
            continue
        state = load_checkpoint(latest_checkpoint(run / "checkpoints"))
        assert "model" in state and "optimizer" not in state, run.name
    figures = {k: v for k, v in report["figures"].items() if k != "seconds"}
    assert set(figures) == {"training_curves", "miou_bars", "probe_bars", "features_pca", "segmentation"}
    for path in [*figures.values(), report["check geometry"]["correspondence_figure"]]:
        assert Path(path).parent == tmp_path / "figures" and Path(path).stat().st_size > 5_000
    text = (tmp_path / "report.md").read_text()
    assert text == markdown(report) and "| View+Geo |" in text and "## Linear probe" in text
    assert all(f"- {line}\n" in text for line in findings(study["table"]))  # the verdicts in plain words

    # a second run over the same folder reads every finished run back
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path), "--quick", "--device", "cpu"]) == 0
    again = json.loads((tmp_path / "report.json").read_text())
    assert again[STAGES[3]]["table"] == study["table"]
    assert "running:" not in capsys.readouterr().out

    # other budgets in the same folder would mix runs: refused before any work, naming the setting
    assert main(["demo", "--out", str(tmp_path), "--quick", "--device", "cpu", "--pretrain-steps", "5"]) == 2
    assert "study.pretrain_steps: 2 before, 5 now" in capsys.readouterr().err


def test_demo_rejects_a_budget_below_one(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quick", "--device", "cpu", "--finetune-epochs", "0"]) == 2
    assert "--finetune-epochs 0: expected a positive number" in capsys.readouterr().err
    assert not (tmp_path / "demo_settings.json").exists()


def test_size_option_reaches_the_rooms_and_the_runs(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--out", str(tmp_path), "--size", "10x80"])
    assert stop.value.code == 2 and "--size: '10x80'" in capsys.readouterr().err

    def stop_at_generation(*args, **kwargs):
        raise KeyboardInterrupt  # the settings are written before any work starts

    monkeypatch.setattr(demo_cli, "_generate", stop_at_generation)
    assert main(["demo", "--out", str(tmp_path), "--quick", "--device", "cpu", "--size", "48x64"]) == 130
    settings = json.loads((tmp_path / "demo_settings.json").read_text())
    assert settings["synth"]["color_size"] == settings["synth"]["depth_size"] == [48, 64]
    assert settings["study"]["size"] == [48, 64]
    capsys.readouterr()
    # the same folder at another size is refused: the runs would mix sizes
    assert main(["demo", "--out", str(tmp_path), "--quick", "--device", "cpu"]) == 2
    assert "color_size" in capsys.readouterr().err


def test_voxel_crop_option_reaches_the_settings(tmp_path, capsys, monkeypatch):
    def stop_at_generation(*args, **kwargs):
        raise KeyboardInterrupt  # the settings are written before any work starts

    monkeypatch.setattr(demo_cli, "_generate", stop_at_generation)
    argv = ["demo", "--out", str(tmp_path), "--quick", "--device", "cpu"]
    assert main([*argv, "--voxel-crop", "frustum"]) == 130
    assert json.loads((tmp_path / "demo_settings.json").read_text())["study"]["voxel_crop"] == "frustum"
    capsys.readouterr()
    # the original's box crop in the same folder would mix the Geo arms' inputs: refused
    assert main(argv) == 2
    assert "study.voxel_crop: 'frustum' before, 'box' now" in capsys.readouterr().err
