"""The demo's linear probe: known answers on tiny features, and the networks it freezes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pri3d.demo.probe import decoder_features, frozen_decoder, linear_probe, recalibrate_batchnorm
from pri3d.models.moco import MoCo
from pri3d.tasks.moco import write_moco_checkpoint

NAMES = ("ignore", "wall", "floor", "chair")


def _layout(seed: int) -> torch.Tensor:
    """Class maps [4, 6, 8] on a feature grid: half wall, 30 % floor, 20 % chair, rows shuffled."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(4):
        cells = torch.tensor([1] * 24 + [2] * 14 + [3] * 10)[torch.randperm(48, generator=generator)]
        rows.append(cells.reshape(6, 8))
    return torch.stack(rows)


def _labels(grid: torch.Tensor) -> torch.Tensor:
    """The class maps at twice the feature size (as a stride-2 decoder's labels), a border ignored."""
    labels = grid.repeat_interleave(2, 1).repeat_interleave(2, 2)  # [N, 12, 16]
    labels[:, 0] = 0
    return labels


def test_a_probe_on_features_that_separate_the_classes_reaches_a_high_miou():
    train, held_out = _layout(0), _layout(1)
    noise = torch.Generator().manual_seed(2)

    def features(grid):  # one-hot class channels plus a nuisance channel: [N, 4, 6, 8]
        onehot = F.one_hot(grid - 1, 3).permute(0, 3, 1, 2).float()
        return torch.cat([onehot, torch.randn(len(grid), 1, 6, 8, generator=noise)], 1)

    report = linear_probe(features(train), _labels(train), features(held_out), _labels(held_out), NAMES)
    # bilinear upsampling blurs the features between cells of different classes, so pixels on a
    # class border can go either way; every class keeps most of its pixels
    assert report["miou"] > 0.8
    assert all(row["iou"] > 0.7 for row in report["classes"])


def test_a_probe_on_constant_features_predicts_one_class():
    train, held_out = _layout(0), _layout(1)
    constant = torch.full((4, 5, 6, 8), 3.0)
    report = linear_probe(constant, _labels(train), constant, _labels(held_out), NAMES)
    # nothing to read: it learns the priors and predicts the most frequent class (wall, about half
    # of the labelled pixels) everywhere: wall's IoU is its share of the pixels, the others' 0
    labels = _labels(held_out)
    assert {row["name"]: row["predicted_pixels"] for row in report["classes"]} == {
        "wall": int((labels > 0).sum()),
        "floor": 0,
        "chair": 0,
    }
    share = int((labels == 1).sum()) / int((labels > 0).sum())
    assert abs(report["miou"] - share / 3) < 1e-12


def test_moco_init_keeps_scratch_decoder_and_takes_the_moco_encoder(tmp_path):
    torch.manual_seed(5)
    moco = MoCo("resnet18", dim=16, queue_size=8)
    path = write_moco_checkpoint(moco, tmp_path / "checkpoint_0000.pth.tar", epoch=1, step=3)
    from_moco = frozen_decoder(path, seed=3, num_classes=len(NAMES))
    scratch = frozen_decoder("scratch", seed=3, num_classes=len(NAMES))
    for name, value in from_moco.encoder.state_dict().items():
        assert torch.equal(value, moco.encoder_q.state_dict()[name]), name
    for name, value in from_moco.decoder.state_dict().items():  # the decoder is scratch's under that seed
        assert torch.equal(value, scratch.decoder.state_dict()[name]), name
    assert not any(p.requires_grad for p in from_moco.parameters()) and not from_moco.training
    images = torch.randn(2, 3, 60, 80)
    assert decoder_features(from_moco, images).shape == (2, 32, 30, 40)  # up4's output: conv0 removed


def test_recalibrated_batchnorm_holds_the_statistics_of_the_images():
    network = frozen_decoder("scratch", seed=0, num_classes=len(NAMES))
    images = torch.randn(6, 3, 32, 48)
    recalibrate_batchnorm(network, images, batch_size=6)
    assert not network.training
    with torch.no_grad():
        first = network.encoder.conv1(images)  # [6, 64, 16, 24]: what the first BatchNorm normalises
    bn = network.encoder.bn1
    torch.testing.assert_close(bn.running_mean, first.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, first.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-5)
