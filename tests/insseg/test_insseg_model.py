"""Mask R-CNN set-up: backbone initialisation and its report, normalisation, frozen stages, sizes, schedule, config."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from pri3d.engine.checkpoint import resolve_weights_path, save_checkpoint
from pri3d.io.images import IMAGENET_MEAN, IMAGENET_STD
from pri3d.models.mask_rcnn import build_detector, finalise_backbone, initialise_body
from pri3d.tasks.insseg import warmup_multistep
from pri3d.tasks.insseg_config import InssegFinetuneConfig, input_sizes, insseg_config, scale_to_batch

SIZES = {"min_size_train": (48, 60), "max_size": 80}


def _resnet50_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = torchvision.models.resnet50(weights=None).state_dict()
    return {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def detector():
    return build_detector(18, **SIZES)


def test_detector_is_torchvision_mask_rcnn_with_the_backbones_normalisation(detector):
    recipe = InssegFinetuneConfig()  # the defaults are the recipe's
    assert (recipe.batch_size_per_image, recipe.score_thresh_test) == (32, 0.5)
    assert isinstance(detector, torchvision.models.detection.MaskRCNN)
    assert detector.roi_heads.box_predictor.cls_score.out_features == 19  # 18 classes + background
    assert detector.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 19
    assert detector.transform.image_mean == list(IMAGENET_MEAN) and detector.transform.image_std == list(
        IMAGENET_STD
    )
    assert detector.transform.min_size == (48, 60) and detector.transform.max_size == 80
    assert (
        detector.roi_heads.fg_bg_sampler.batch_size_per_image == 32 and detector.roi_heads.score_thresh == 0.5
    )
    assert detector.roi_heads.detections_per_img == recipe.detections_per_image == 100
    assert detector.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    other = build_detector(3, (60,), 80, batch_size_per_image=8, score_thresh=0.05, proposals_test=300)
    assert other.roi_heads.fg_bg_sampler.batch_size_per_image == 8 and other.roi_heads.score_thresh == 0.05
    assert other.rpn._post_nms_top_n["testing"] == 300


def test_body_loads_from_a_pri3d_checkpoint_with_a_report(detector, tmp_path):
    encoder = _resnet50_state(1)
    state = {f"backbone.encoder.{k}": v for k, v in encoder.items() if not k.startswith("fc.")}
    state.update(
        {"backbone.decoder.conv0.weight": torch.zeros(128, 64, 1, 1), "w2d.weight": torch.zeros(64, 128)}
    )
    save_checkpoint(tmp_path / "pretrain" / "checkpoints", "step0000005.pth", {"model": state, "step": 5})
    path = resolve_weights_path(
        tmp_path / "pretrain", "finetune.pretrain"
    )  # a run folder: its newest checkpoint
    report = initialise_body(detector, path)
    body = detector.backbone.body.state_dict()
    assert all(torch.equal(body[k], encoder[k]) for k in body)
    assert len(report.taken) == len(body) and all(
        k.startswith("detector.backbone.body.") for k in report.taken
    )
    assert set(report.skipped) == {"backbone.decoder.conv0.weight", "w2d.weight"}
    assert all(k.startswith("detector.backbone.fpn.") or "backbone.body" not in k for k in report.missing)
    assert any(k.startswith("detector.roi_heads.mask_head") for k in report.missing)
    assert report.source.endswith("step0000005.pth")


def test_body_loading_is_strict(detector, tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(
        ValueError, match=r"r18\.pth holds a resnet18 encoder, this model has a resnet50"
    ) as err:
        initialise_body(detector, str(tmp_path / "r18.pth"))
    assert "layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in str(err.value)
    state = _resnet50_state(3)
    state["layer3.2.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    torch.save(state, tmp_path / "reshaped.pth")
    with pytest.raises(
        ValueError, match=r"reshaped\.pth does not match the Mask R-CNN ResNet-50 body"
    ) as err:
        initialise_body(detector, str(tmp_path / "reshaped.pth"))
    assert "layer3.2.conv2.weight: file (256, 256, 1, 1) vs model (256, 256, 3, 3)" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"none\.pth"):
        initialise_body(detector, str(tmp_path / "none.pth"))
    scratch = initialise_body(detector, "scratch")
    assert not scratch.taken and len(scratch.missing) == len(detector.state_dict())


def test_imagenet_goes_through_torchvision_weight_loading(detector, tmp_path, monkeypatch):
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61\.pth") as err:
        initialise_body(detector, "imagenet")
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in str(err.value)
    assert "finetune.pretrain=scratch" in str(err.value)
    state = _resnet50_state(2)
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)  # made by the first try
    torch.save(state, tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    report = initialise_body(detector, "imagenet")
    assert report.source == weights.url and "fc.weight" in report.skipped
    assert torch.equal(detector.backbone.body.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


def _offline(*args, **kwargs):
    raise OSError("no network in this test")


def test_frozen_norm_and_stages():
    frozen = build_detector(3, **SIZES)
    before = frozen.backbone.body.layer2[0].bn1.running_var.clone()
    finalise_backbone(frozen)  # the recipe's: FrozenBN, stem + res2 frozen
    body = frozen.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert isinstance(body.layer2[0].bn1, FrozenBatchNorm2d) and torch.equal(
        body.layer2[0].bn1.running_var, before
    )
    assert not any(p.requires_grad for p in [*body.conv1.parameters(), *body.layer1.parameters()])
    assert all(p.requires_grad for p in body.layer2.parameters())
    trainable = build_detector(3, **SIZES)
    finalise_backbone(trainable, freeze_at=1, frozen_bn=False)
    body = trainable.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(body.layer1[0].bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in body.layer1.parameters()) and not body.conv1.weight.requires_grad


def test_input_sizes_follow_the_data():
    sizes = input_sizes(InssegFinetuneConfig(), (480, 640))
    assert sizes == {"min_size_train": (384, 403, 422, 442, 461, 480), "min_size_test": 480, "max_size": 640}
    assert input_sizes(InssegFinetuneConfig(), (60, 80))["min_size_train"][-1] == 60
    fixed = InssegFinetuneConfig(min_size_train=[640, 800], min_size_test=800, max_size=1333)
    assert input_sizes(fixed, (480, 640)) == {
        "min_size_train": (640, 800),
        "min_size_test": 800,
        "max_size": 1333,
    }


def test_recipe_defaults_schedule_and_scaling():
    config = insseg_config([])
    assert (config.train.batch_size, config.optimizer.lr, config.train.max_steps) == (16, 0.0025, 90000)
    assert config.scheduler.decay_steps == [60000, 80000] and config.finetune.norm == "frozen"
    scaled, note = scale_to_batch(insseg_config(["train.batch_size=4"]))
    assert scaled.optimizer.lr == pytest.approx(0.000625) and scaled.train.max_steps == 360000
    assert scaled.scheduler.decay_steps == [240000, 320000] and scaled.scheduler.warmup_steps == 4000
    assert scaled.finetune.eval_period == 40000 and "0.0025 -> 0.000625" in note
    assert scale_to_batch(insseg_config(["train.batch_size=4", "scheduler.auto_scale=false"]))[1] is None
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = warmup_multistep(optimizer, config.scheduler).lr_lambdas[0]  # the LR multiplier at a step
    assert optimizer.param_groups[0]["lr"] == factor(0) == pytest.approx(0.001)
    assert factor(500) == pytest.approx(0.5005) and factor(1000) == factor(59999) == 1.0
    assert factor(60000) == pytest.approx(0.1) and factor(80000) == pytest.approx(0.01)


def test_presets_detectron2_keys_and_config_errors():
    nyu = insseg_config(
        [
            "dataset=nyuv2",
            "SOLVER.STEPS=(100,200)",
            "MODEL.WEIGHTS=scratch",
            "OUTPUT_DIR=runs/x",
            "finetune.norm=bn",
        ]
    )
    assert nyu.dataset.name == "NYUv2" and nyu.train.batch_size == 2 and nyu.finetune.eval_period == 5000
    assert (
        nyu.scheduler.decay_steps == [100, 200]
        and nyu.finetune.pretrain == "scratch"
        and nyu.train.log_dir == "runs/x"
    )
    coco = insseg_config(["dataset=coco", "init=imagenet"])
    assert (
        coco.optimizer.lr == 0.02 and coco.finetune.min_size_test == 800 and coco.train.phase == "train2017"
    )
    with pytest.raises(ValueError, match=r"did you mean finetune\.freeze_at"):
        insseg_config(["finetune.freez_at=1"])
    with pytest.raises(ValueError, match=r"finetune\.norm=gn: expected frozen or bn"):
        insseg_config(["finetune.norm=gn"])
    with pytest.raises(ValueError, match="dataset='voc'"):
        insseg_config(["dataset=voc"])
    with pytest.raises(ValueError, match=r"norm=bn finetune\.freeze_at=0"):
        insseg_config(["init=scratch"])
    with pytest.raises(ValueError, match="argument of `pri3d eval insseg`"):
        insseg_config(["checkpoint=x.pth"])
