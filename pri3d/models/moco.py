"""MoCo v2 (Chen et al. 2020, after He et al. 2020): the 2D-only contrastive baseline of Pri3D.

One module holds the method: a query encoder, a momentum key encoder, a queue of past keys and the
InfoNCE loss over them. Defaults are the original's recipe (its ``pretrain/moco/scripts/train.sh``):

    arch          resnet50   torchvision ResNet; its keys are torchvision's under ``encoder_q.`` / ``encoder_k.``
    dim           128        output dimension of the projection head
    mlp           True       2-layer MLP head (fc.0: Linear(C, C), ReLU, fc.2: Linear(C, dim)), MoCo v2
    queue_size    65536      negatives kept (K)
    momentum      0.999      key encoder: k <- m·k + (1 − m)·q after every optimizer step
    temperature   0.2        softmax temperature (MoCo v2)
    bn_group_size 32         shuffle BN: BatchNorm statistics over groups of at most this many samples

**Shuffle BN without several GPUs.** MoCo normalises the keys with BatchNorm statistics of other
samples than their queries', or the network can find its positive through the statistics the two
share. Upstream MoCo gets this by running one BN per GPU and shuffling the keys across GPUs. Here
every BatchNorm of both encoders is a :class:`GhostBatchNorm2d`: a micro-batch of n samples is cut into
ceil(n / bn_group_size) contiguous groups, each normalised with its own statistics. Queries are
grouped in batch order, keys after a random permutation that is undone afterwards. The permutation
is ``argsort(batch["shuffle_key"])``, random numbers that the dataset draws per sample from (seed,
epoch, index). So the grouping depends on the samples alone: one process accumulating A micro-batches,
A processes, and a resumed run compute the same keys. At the original's batch of 256 on one
process this gives 8 groups of 32, as 8 GPUs did.

**Momentum update and enqueue once per optimizer step.** The trainer calls ``forward`` once per
micro-batch. Upstream updates the key encoder at the start of ``forward`` and enqueues at its end,
which with gradient accumulation would apply the momentum A times per step and let the later
micro-batches of a step use earlier ones' keys as negatives. Here ``forward`` keeps its keys aside
(gathered from all ranks in rank order under DDP) and :meth:`MoCo.end_step`, called after every
optimizer step, updates the key encoder and then enqueues them in sample order. The sequence of key
encoders and queues is upstream's (nothing reads the key encoder between its update after step t
and the next forward), and it is the same with accumulation, over ranks, and after a resume:
the queue and its pointer are buffers, so checkpoints carry them.

Why not lightly: its memory bank enqueues inside ``forward`` and its batch shuffle does nothing for
BatchNorm on one process, the two properties above; the parts it would replace are a few lines, and
it would be a new dependency for them.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn

from pri3d.weights import (
    check_resnet_arch,
    check_state,
    imagenet_state,
    load_weights_file,
    torchvision_state_for,
)

__all__ = ["ARCHS", "GhostBatchNorm2d", "MoCo", "build_encoder"]

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from groups of at most ``group_size`` samples.

    A batch of n samples is split into ``ceil(n / group_size)`` contiguous groups of near-equal size
    (``torch.tensor_split``); each is normalised with its own mean and variance, exactly as a plain
    BatchNorm2d run on that group alone. The running statistics move once per call, towards the mean
    over groups of their statistics. In eval mode, and for n <= group_size, it is a plain BatchNorm2d.
    Parameters and buffers are BatchNorm2d's, so state dicts are torchvision's.
    """

    def __init__(self, num_features: int, group_size: int = 32, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if group_size < 1:
            raise ValueError(f"group_size={group_size}: expected an integer >= 1")
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        groups = math.ceil(x.shape[0] / self.group_size)
        if not self.training or groups <= 1:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        tracked = self.running_mean is not None
        means = [self.running_mean.clone() if tracked else None for _ in range(groups)]
        variances = [self.running_var.clone() if tracked else None for _ in range(groups)]
        out = torch.cat(
            [
                F.batch_norm(chunk, mean, var, self.weight, self.bias, True, factor, self.eps)
                for chunk, mean, var in zip(x.tensor_split(groups), means, variances)
            ]
        )
        if tracked:
            with torch.no_grad():  # the running average is linear: averaging per-group updates is exact
                self.running_mean.copy_(torch.stack(means).mean(0))
                self.running_var.copy_(torch.stack(variances).mean(0))
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def build_encoder(arch: str, dim: int = 128, mlp: bool = True, bn_group_size: int = 32) -> nn.Module:
    """torchvision ``arch`` with ghost BatchNorm and a projection head as ``fc`` (MLP: fc.0, fc.2).

    [B, 3, H, W] -> [B, dim]. Every key is torchvision's (``fc`` aside), as in upstream MoCo's files.
    """
    if arch not in ARCHS:
        raise ValueError(f"moco.arch={arch!r}: expected one of {', '.join(ARCHS)}")
    norm = partial(GhostBatchNorm2d, group_size=bn_group_size)
    encoder = torchvision.models.get_model(arch, weights=None, num_classes=dim, norm_layer=norm)
    if mlp:
        width = encoder.fc.in_features
        encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), encoder.fc)
    return encoder


class MoCo(nn.Module):
    """MoCo v2 behind the trainer's interface (a collated batch in, losses out).

    ``forward(batch)`` reads ``image_q``, ``image_k`` [B, 3, H, W] (two augmentations of each image)
    and ``shuffle_key`` [B] (random numbers ordering the keys into BN groups), and returns
    ``total_loss`` (= ``moco_loss``, InfoNCE over 1 positive and K queued negatives) and ``accuracy``
    (share of queries whose positive has the highest logit). Call :meth:`end_step` after every
    optimizer step (see the module docstring).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        dim: int = 128,
        mlp: bool = True,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        bn_group_size: int = 32,
    ) -> None:
        super().__init__()
        self.arch, self.momentum, self.temperature = arch, momentum, temperature
        self.encoder_q = build_encoder(arch, dim, mlp, bn_group_size)
        self.encoder_k = build_encoder(arch, dim, mlp, bn_group_size)
        self._copy_query_to_key()
        for parameter in self.encoder_k.parameters():
            parameter.requires_grad_(False)  # moved by end_step only; DDP leaves it out of its gradients
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))  # [dim, K]
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))  # next column to write
        self._pending: list[torch.Tensor] = []  # this step's keys, [n, dim] each, until end_step

    def _copy_query_to_key(self) -> None:
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())

    def load_backbone(self, weights: str | Path, option: str = "moco.pretrained") -> str:
        """Initialise both encoders' ResNet (not the head) from ``imagenet`` (torchvision's weights) or
        a weights file of any layout :mod:`pri3d.weights` converts to torchvision's; returns the source.

        Every ResNet key must come from the file (shapes checked); only ``fc`` keeps its initialisation.
        """
        if str(weights) == "imagenet":
            state, source = imagenet_state(self.arch, option)
        else:
            source = str(weights)
            state, _ = load_weights_file(weights)
        own = {k: v for k, v in self.encoder_q.state_dict().items() if not k.startswith("fc.")}
        resnet, _ = torchvision_state_for(self.encoder_q, state, source)
        check_resnet_arch(own, resnet, source, f"{option}: this model is moco.arch={self.arch}")
        check_state(own, resnet, source, f"the {self.arch} encoder")
        self.encoder_q.load_state_dict({**self.encoder_q.state_dict(), **resnet}, strict=True)
        self._copy_query_to_key()
        return source

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        q = F.normalize(self.encoder_q(batch["image_q"]), dim=1)  # queries: [B, dim]
        with torch.no_grad():
            order = torch.argsort(batch["shuffle_key"])  # [B]: the key encoder's BN groups
            k = self.encoder_k(batch["image_k"][order])
            k = F.normalize(k.float(), dim=1)[torch.argsort(order)]  # keys: [B, dim], back in batch order
        positive = (q * k).sum(1, keepdim=True)  # [B, 1]
        negative = q @ self.queue.to(q.dtype)  # [B, K]
        logits = torch.cat([positive, negative], dim=1) / self.temperature  # [B, 1 + K]
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # the positive is column 0
        loss = F.cross_entropy(logits.float(), target)
        self._pending.append(_gather_from_ranks(k))
        accuracy = (logits.argmax(1) == 0).float().mean()
        return {"total_loss": loss, "moco_loss": loss.detach(), "accuracy": accuracy}

    @torch.no_grad()
    def end_step(self) -> None:
        """After an optimizer step: move the key encoder towards the query encoder and enqueue the
        step's keys. Does nothing after a step without a forward (all its samples were skipped)."""
        if not self._pending:
            return
        self.momentum_update()
        self.enqueue(torch.cat(self._pending))
        self._pending.clear()

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k <- k + (1 − m)·(q − k) for every parameter (BatchNorm statistics stay the key encoder's own)."""
        for key, query in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            key.lerp_(query.detach(), 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` [n, dim] into the queue's columns from the pointer on, wrapping around; when
        n exceeds the queue only the last K fit. The pointer advances by n (mod K)."""
        size = self.queue.shape[1]
        start = int(self.queue_ptr)
        if len(keys) > size:
            start = (start + len(keys) - size) % size
            keys = keys[-size:]
        columns = (start + torch.arange(len(keys), device=keys.device)) % size  # [n]
        self.queue[:, columns] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (start + len(keys)) % size


def _gather_from_ranks(keys: torch.Tensor) -> torch.Tensor:
    """``keys`` [n, dim] of every rank, concatenated in rank order (ranks may hold different n)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    count = torch.tensor([len(keys)], device=keys.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    largest = int(max(counts))
    padded = keys.new_zeros(largest, keys.shape[1])  # all_gather needs one shape on every rank
    padded[: len(keys)] = keys
    gathered = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(gathered, padded)
    return torch.cat([part[: int(n)] for part, n in zip(gathered, counts)])
