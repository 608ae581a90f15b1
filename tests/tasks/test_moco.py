"""`pri3d moco` end to end: the original's recipe as defaults, the cosine schedule, MoCo-layout files per
epoch that export to torchvision and initialise fine-tuning, exact resume after SIGKILL, and two DDP
processes equal to one process accumulating the same global batch."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision
from cli_subprocess import run_pri3d_ddp, start_pri3d
from torch import nn

from pri3d.cli import main
from pri3d.engine.checkpoint import latest_checkpoint, load_checkpoint
from pri3d.engine.config import ConfigError, SchedulerConfig, check_run_config, load_config
from pri3d.engine.schedules import build_scheduler
from pri3d.models.moco import MoCo
from pri3d.models.segmentation import build_segmentation_model, initialise
from pri3d.tasks.moco import MoCoFiles, check_bn_groups, moco_pretrain
from pri3d.tasks.moco_config import MOCO_RULES, MoCoRunConfig

STEPS = 7  # the 30 frames make 3 steps per epoch: two epoch ends, then a stop inside the third epoch


def _overrides(root: Path, log_dir: Path, *extra: str) -> list[str]:
    return [
        f"dataset.path={root}",
        f"train.log_dir={log_dir}",
        "dataset.frames=each_once",
        "dataset.resize=[60,80]",
        "dataset.crop=32",
        "moco.arch=resnet18",
        "moco.pretrained=scratch",
        "moco.queue_size=32",
        "moco.momentum=0.99",
        "moco.bn_group_size=2",
        "train.batch_size=8",
        f"train.max_steps={STEPS}",
        "train.checkpoint_every=1",
        "train.workers=0",
        "train.threads=1",
        "train.report_batch=1",
        "logging.tensorboard=false",
        *extra,
    ]


def _in_process(root: Path, log_dir: Path) -> None:
    """One process, 2 accumulation steps of 4 samples (2 BN groups of 2 each)."""
    threads = torch.get_num_threads()
    try:
        moco_pretrain(load_config(MoCoRunConfig, _overrides(root, log_dir, "optimizer.accumulate_step=2")))
    finally:
        torch.set_num_threads(threads)


def _final(log_dir: Path) -> dict:
    return load_checkpoint(latest_checkpoint(log_dir / "checkpoints"))["model"]


@pytest.fixture(scope="module")
def reference(pretrain_root, tmp_path_factory) -> Path:
    """The run the others are compared with (:func:`_in_process`)."""
    log_dir = tmp_path_factory.mktemp("moco") / "one"
    _in_process(pretrain_root, log_dir)
    return log_dir


def test_defaults_are_the_original_recipe_and_bad_values_are_named():
    config = load_config(MoCoRunConfig, [])
    m, o, s, d = config.moco, config.optimizer, config.scheduler, config.dataset
    assert (m.arch, m.pretrained, m.dim, m.mlp) == ("resnet50", "imagenet", 128, True)
    assert (m.queue_size, m.momentum, m.temperature, m.bn_group_size) == (65536, 0.999, 0.2, 32)
    assert (o.optimizer, o.lr, o.sgd_momentum, o.sgd_dampening, o.weight_decay) == (
        "SGD",
        0.03,
        0.9,
        0.0,
        1e-4,
    )
    assert (s.scheduler, s.max_epochs, config.train.batch_size) == ("CosineLR", 100, 256)
    assert (d.frames, d.resize, d.crop, d.extra_images, d.balanced) == (
        "first_of_pair",
        [240, 320],
        224,
        "",
        True,
    )
    check_run_config(config, MOCO_RULES)
    check_bn_groups(config, world_size=1)  # 256 on one process: 8 groups of 32, as 8 GPUs
    with pytest.raises(ConfigError, match=r"moco\.momentum=1\.0: expected a number in \[0, 1\)"):
        check_run_config(load_config(MoCoRunConfig, ["moco.momentum=1.0"]), MOCO_RULES)
    with pytest.raises(ConfigError, match=r"dataset\.frames=pairs: expected first_of_pair, each_once"):
        check_run_config(load_config(MoCoRunConfig, ["dataset.frames=pairs"]), MOCO_RULES)
    with pytest.raises(ConfigError, match=r"holds 32 samples .* set moco\.bn_group_size to 16 or less"):
        check_bn_groups(config, world_size=8)


def test_cosine_schedule_follows_half_a_cosine_over_the_run():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.03)
    scheduler = build_scheduler(optimizer, SchedulerConfig(scheduler="CosineLR"), 10, 40)
    rates = []
    for _ in range(41):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step in (0, 10, 20, 33, 40):
        assert math.isclose(rates[step], 0.03 * 0.5 * (1 + math.cos(math.pi * step / 40)), abs_tol=1e-12)
    assert rates[0] == 0.03 and math.isclose(rates[20], 0.015) and rates[40] < 1e-18


def test_moco_files_are_pruned_to_the_newest_keep_checkpoints(tmp_path):
    config = load_config(MoCoRunConfig, [f"train.log_dir={tmp_path}", "train.keep_checkpoints=2"])
    files = MoCoFiles(MoCo("resnet18", queue_size=4), config)
    trainer = SimpleNamespace(env=SimpleNamespace(is_main=True), step=0, logger=SimpleNamespace(info=print))
    for epoch in range(1, 5):
        trainer.step = 3 * epoch
        files(trainer, epoch)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["checkpoint_0002.pth.tar", "checkpoint_0003.pth.tar"]
    state = torch.load(tmp_path / "checkpoints" / kept[-1], weights_only=True)
    assert (state["epoch"], state["step"], state["arch"]) == (4, 12, "resnet18")


@pytest.mark.slow
def test_run_writes_moco_files_that_export_and_initialise_fine_tuning(reference, tmp_path, capsys):
    folder = reference / "checkpoints"
    files = sorted(folder.glob("checkpoint_*.pth.tar"))
    assert [f.name for f in files] == [
        "checkpoint_0000.pth.tar",
        "checkpoint_0001.pth.tar",
        "checkpoint_0002.pth.tar",
    ]
    states = [torch.load(f, weights_only=True) for f in files]
    assert [(s["epoch"], s["step"], s["arch"]) for s in states] == [
        (1, 3, "resnet18"),
        (2, 6, "resnet18"),
        (2, 7, "resnet18"),
    ]
    final = _final(reference)
    moco = states[-1]["state_dict"]
    assert moco.keys() == {f"module.{k}" for k in final}
    assert all(torch.equal(moco[f"module.{k}"], v) for k, v in final.items())
    assert int(moco["module.queue_ptr"]) == STEPS * 8 % 32  # the queue wrapped
    assert "module.encoder_q.fc.2.weight" in moco and "module.encoder_k.layer4.1.bn2.running_var" in moco
    MoCo("resnet18", queue_size=32).load_state_dict(final, strict=True)
    metrics = (reference / "metrics.jsonl").read_text()
    assert metrics.count('"train/moco_loss"') == STEPS and '"train/accuracy"' in metrics

    # the MoCo file and the run folder (pri3d's checkpoint) both export to a strict torchvision ResNet-18
    for source in (files[-1], reference):
        out = tmp_path / f"{Path(source).name}.pth"
        assert main(["export", "torchvision", str(source), str(out)]) == 0
        resnet = torchvision.models.resnet18()
        resnet.fc = nn.Identity()
        resnet.load_state_dict(torch.load(out, weights_only=True), strict=True)
        for name, value in resnet.state_dict().items():
            assert torch.equal(value, final[f"encoder_q.{name}"]), name

    # init= of semantic segmentation takes the query encoder, reporting the head, key encoder and queue
    model = build_segmentation_model("unet", "Res18UNet", 21)
    report = initialise(model, files[-1])
    assert report.layout == "moco"
    for name, value in model.backbone.encoder.state_dict().items():
        assert torch.equal(value, final[f"encoder_q.{name}"]), name
    assert "module.queue" in report.skipped and "module.encoder_q.fc.0.weight" in report.skipped

    # evaluating the run as a segmentation model is refused, naming what it is and what to do with it
    assert main(["eval", "semseg", f"checkpoint={reference}"]) == 1
    assert "is a Pri3D pre-training checkpoint, not a semantic segmentation one" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_uninterrupted_run(pretrain_root, reference, tmp_path):
    args = ["moco", *_overrides(pretrain_root, tmp_path / "b", "optimizer.accumulate_step=2")]
    proc = start_pri3d(args)
    target = tmp_path / "b" / "checkpoints" / "step0000003.pth"
    deadline = time.time() + 300
    while not target.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert target.exists(), proc.stdout.read() if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "checkpoints" / f"step{STEPS:07d}.pth").exists(), "killed too late"
    _in_process(pretrain_root, tmp_path / "b")  # the resumed run
    assert "resumed from" in (tmp_path / "b" / "train.log").read_text()
    final, expected = _final(tmp_path / "b"), _final(reference)
    assert final.keys() == expected.keys()
    for key in expected:  # queue, pointer, both encoders and their BatchNorm statistics
        assert torch.equal(final[key], expected[key]), key


@pytest.mark.slow
def test_two_ddp_processes_equal_one_process_with_the_same_global_batch(pretrain_root, reference, tmp_path):
    ddp = run_pri3d_ddp(["moco", *_overrides(pretrain_root, tmp_path / "two")])
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    one, two = _final(reference), _final(tmp_path / "two")
    model = MoCo("resnet18", queue_size=32)
    compared = {name for name, _ in model.named_parameters()} | {"queue", "queue_ptr"}
    # BatchNorm running statistics differ by design: DDP hands every rank rank 0's (its own micro-batch),
    # one process updates them from both micro-batches. Parameters, keys and queue must not differ beyond
    # float32 rounding: gloo sums the two gradients in another order than accumulation, over 7 SGD steps.
    for name in compared:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
