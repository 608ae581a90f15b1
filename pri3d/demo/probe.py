"""The demo's second read-out: a linear probe on the frozen UNet's decoder features.

Fine-tuning mIoU mixes what a representation holds with how it trains on. The probe reads the first
alone. For each initialisation (scratch, MoCo, each Pri3D arm; one probe per pre-training seed) it
freezes the network that initialisation's fine-tuning starts from: the ``Semantic2D`` UNet built
under the same seed and initialised from the same weights (:func:`frozen_decoder`), without its last
1×1 convolution. What is left outputs the decoder's features (the ``up4`` block: ``[B, 32, H/2, W/2]``
for Res18UNet), the features fine-tuning's classifier reads. The probe trains that classifier alone:
a 1×1 convolution to K classes, upsampled bilinearly to the label size as ``Semantic2D`` does, on the
labelled train frames; it is scored by mIoU on the held-out rooms.

One read-out for every arm, including MoCo, which trains the encoder only: its decoder is the
random decoder of scratch under the same seed, so MoCo's probe differs from scratch's by the encoder
alone. The probe does not read the encoder's last stage instead: at the demo's 60×80 that stage is a
2×3 grid, and a probe on it would measure the upsampling more than the features.

BatchNorm statistics are re-estimated on the labelled frames for every arm before the features are
read (no labels used): the random decoders of scratch and MoCo have none of their own, and the
pre-trained ones were gathered on augmented pre-training batches.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pri3d.labels import IGNORE_INDEX
from pri3d.metrics import ConfusionMatrix, iou_report

__all__ = [
    "decoder_features",
    "frozen_decoder",
    "linear_probe",
    "probe_initialisation",
    "recalibrate_batchnorm",
]


def frozen_decoder(init: str | Path, seed: int, num_classes: int, backbone: str = "Res18UNet") -> nn.Module:
    """The UNet that fine-tuning from ``init`` (``scratch`` or a weights file or run folder) with
    ``seed`` starts from, without its classifier: ``[B, 3, H, W]`` -> ``[B, C, ~H/2, ~W/2]``, frozen,
    in eval mode.

    Built exactly as `pri3d finetune semseg` builds it (seed, then the model, then the weights), so
    what a file does not hold (a MoCo file's decoder) is the random initialisation of scratch's run
    with that seed.
    """
    from pri3d.engine.checkpoint import resolve_init
    from pri3d.models.segmentation import build_segmentation_model, initialise

    torch.manual_seed(seed)
    model = build_segmentation_model("Semantic2D", backbone, num_classes)
    initialise(model, resolve_init(str(init), "probe init"))
    network = model.backbone
    network.decoder.conv0 = nn.Identity()  # the classifier the probe replaces
    network.requires_grad_(False)
    return network.eval()


@torch.no_grad()
def recalibrate_batchnorm(network: nn.Module, images: torch.Tensor, batch_size: int = 16) -> None:
    """Replace every BatchNorm's running statistics by their average over ``images`` [N, 3, H, W]
    (batches of ``batch_size``, each weighted alike); leaves ``network`` in eval mode."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    network.train()
    for start in range(0, len(images), batch_size):
        network(images[start : start + batch_size])
    network.eval()


@torch.no_grad()
def decoder_features(network: nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """``images`` [N, 3, H, W] -> features [N, C, h, w] from ``network`` in eval mode."""
    network.eval()
    return torch.cat([network(images[s : s + batch_size]) for s in range(0, len(images), batch_size)])


def _pixels(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, C, h, w] upsampled to the labels' [N, H, W] -> ([M, C], [M]) for labelled pixels.

    The upsampling is ``Semantic2D``'s (bilinear, align_corners=True). Applying it to the features
    rather than to the logits gives the same logits: both maps are linear and the bilinear weights of
    a pixel sum to 1, so the bias passes through unchanged.
    """
    up = F.interpolate(features.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
    keep = labels != IGNORE_INDEX  # [N, H, W]
    return up.permute(0, 2, 3, 1)[keep], labels[keep]


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    eval_features: torch.Tensor,
    eval_labels: torch.Tensor,
    class_names: list[str] | tuple[str, ...],
    steps: int = 200,
    lr: float = 0.05,
    pixels: int = 65536,
    seed: int = 0,
) -> dict:
    """Train a 1×1-conv classifier on frozen features and score it; returns `pri3d.metrics.iou_report`.

    Args:
        train_features, eval_features: ``[N, C, h, w]`` float features.
        train_labels, eval_labels: ``[N, H, W]`` int64 class ids (``IGNORE_INDEX`` not counted).
        class_names: K names (the logits' classes, the ignore class included).
        steps: full-batch Adam steps on the cross-entropy; the weights start at zero.
        lr: Adam's learning rate.
        pixels: train pixels drawn (without replacement, by ``seed``) for the fit; all when fewer.

    Features are standardised per channel with the train pixels' mean and deviation (a channel that
    does not vary stays 0), so one step size suits every network.
    """
    x, y = _pixels(train_features, train_labels)  # [M, C], [M]
    if len(y) == 0:
        raise ValueError("linear probe: the train frames hold no labelled pixel")
    if len(y) > pixels:
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:pixels]
        x, y = x[pick], y[pick]
    mean, std = x.mean(0), x.std(0)
    scale = torch.where(std > 1e-6, 1 / std.clamp(min=1e-6), torch.zeros_like(std))  # [C]
    x = (x - mean) * scale
    classifier = nn.Linear(x.shape[1], len(class_names), device=x.device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(classifier(x), y).backward()
        optimizer.step()
    matrix = ConfusionMatrix(len(class_names), IGNORE_INDEX)
    with torch.no_grad():
        for start in range(0, len(eval_features), 16):  # a chunk's upsampled features, not all at once
            fx, fy = _pixels(eval_features[start : start + 16], eval_labels[start : start + 16])
            matrix.update(classifier((fx - mean) * scale).argmax(1), fy)
    return iou_report(matrix.matrix, class_names, IGNORE_INDEX)


def probe_initialisation(
    init: str | Path,
    seed: int,
    frames: str | Path,
    size: tuple[int, int],
    steps: int = 200,
    device: str = "cpu",
) -> dict:
    """The probe of one initialisation on a fine-tuning folder (``scannet_frames_25k`` layout with
    ``scannetv2_{train,val}.txt``): fit on the train frames, score on the val frames, on ``device``.

    Returns ``miou`` (standard), ``miou_original``, ``pixel_accuracy`` and the frame counts.
    """
    from pri3d.data.semseg import SemsegOptions, build_semseg_dataset

    sets = {
        phase: build_semseg_dataset(
            "ScanNet", frames, phase, SemsegOptions(size=tuple(size)), split_dir=frames, train=False
        )
        for phase in ("train", "val")
    }
    tensors = {}
    for phase, dataset in sets.items():
        samples = [dataset[i] for i in range(len(dataset))]
        broken = [s["skip"] for s in samples if "skip" in s]
        if broken:
            raise ValueError(f"linear probe: unreadable {phase} frames: {broken}")
        tensors[phase] = (
            torch.stack([s["image"] for s in samples]).to(device),
            torch.stack([s["label"] for s in samples]).to(device),
        )
    names = sets["train"].class_names
    network = frozen_decoder(init, seed, len(names)).to(device)
    recalibrate_batchnorm(network, tensors["train"][0])
    features = {phase: decoder_features(network, images) for phase, (images, _) in tensors.items()}
    report = linear_probe(
        features["train"],
        tensors["train"][1],
        features["val"],
        tensors["val"][1],
        names,
        steps=steps,
        seed=seed,
    )
    return {
        "miou": report["miou"],
        "miou_original": report["miou_original"],
        "pixel_accuracy": report["pixel_accuracy"],
        "train_frames": len(sets["train"]),
        "val_frames": len(sets["val"]),
        "feature_channels": int(features["train"].shape[1]),
    }
