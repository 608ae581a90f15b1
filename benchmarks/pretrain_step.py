"""Pre-training throughput: pairs/s of a full training step (forward, backward, SGD step), CPU or GPU.

For each backbone × batch × mode it builds a synthetic batch (`synthetic_batch.py`: a ray-cast box
room, 1024 sampled matches, ~35k voxels per view shaped like surfaces), then times

* the **step**: zero_grad, forward (under bf16 autocast with ``--bf16``), backward, ``optimizer.step``
  with the released recipe's SGD (lr 0.1, momentum 0.9, dampening 0.1), exactly as the trainer does;
* the **3D network** alone: ``backbone3d`` forward + backward on both views' voxels;
* **correspondence + loss**: the model's forward + backward with both backbones replaced by
  recorded outputs, i.e. the feature gathers at the matches, the projections and all losses.

Each figure is the minimum over ``--repeat`` runs after one warm-up run (the machine may be shared).
The original's step times (2 cores, 240×320, fp32, from the issue) give the speed-up column.

    PYTHONPATH=. python benchmarks/pretrain_step.py --backbone Res18UNet Res50UNet --batch 2 8
    PYTHONPATH=. python benchmarks/pretrain_step.py --bf16 --channels-last
    PYTHONPATH=. python benchmarks/pretrain_step.py --device cuda --bf16 --channels-last
    PYTHONPATH=. python benchmarks/pretrain_step.py --device cuda --backbone Res50UNet --batch 8 \
        --backend3d torch triton
"""

from __future__ import annotations

import argparse
import platform
import time
from contextlib import nullcontext

import torch
from synthetic_batch import batch_summary, pair_batch
from torch import nn

from pri3d.models.pri3d import Pri3D

MODES = {  # name -> (view_invariant, geometric_prior, depth)
    "view": (True, False, False),
    "view+depth": (True, False, True),
    "view+geo+depth": (True, True, True),
}

#: The original's seconds per training step on 2 cores, 240×320, fp32 (backbone, batch, mode).
ORIGINAL_STEP_S = {
    ("Res18UNet", 8, "view"): 6.3,
    ("Res18UNet", 8, "view+depth"): 7.1,
    ("Res18UNet", 8, "view+geo+depth"): 75.0,
    ("Res50UNet", 2, "view"): 19.0,
    ("Res50UNet", 2, "view+geo+depth"): 34.0,
}


class _Replay(nn.Module):
    """Returns recorded outputs in turn: stands in for a backbone to time the rest of the model."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.calls = 0

    def forward(self, *args: object) -> torch.Tensor:
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


def _min_time(fn, repeat: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: allocator, oneDNN/cuDNN kernels, lazily built tables
    best = float("inf")
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _channels_last(value: object) -> object:
    is_image = isinstance(value, torch.Tensor) and value.dim() == 4
    return value.contiguous(memory_format=torch.channels_last) if is_image else value


def _autocast(enabled: bool, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def measure(model: Pri3D, batch: dict, bf16: bool, repeat: int, device: torch.device) -> dict[str, float]:
    """Seconds for a step, the 3D network and correspondence + loss (minimum over `repeat`)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0.1)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(bf16, device):
            losses = model(batch)
        losses["total_loss"].backward()
        optimizer.step()

    times = {"step": _min_time(step, repeat, device)}
    optimizer.zero_grad(set_to_none=True)

    if model.geometric_prior:

        def network3d() -> None:
            for v in (1, 2):
                out = model.backbone3d(batch[f"voxels{v}"], batch[f"voxel_colors{v}"])
                out.sum().backward()

        times["3d"] = _min_time(network3d, repeat, device)

    # Record both backbones' outputs, then replay them as leaves: what remains is the loss part.
    recorded: dict[str, list[torch.Tensor]] = {"backbone": [], "backbone3d": []}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: recorded[name].append(o.detach())
        )
        for name in recorded
        if hasattr(model, name)
    ]
    with torch.no_grad(), _autocast(bf16, device):
        model(batch)
    for hook in hooks:
        hook.remove()
    originals = {name: getattr(model, name) for name in recorded if recorded[name]}
    try:
        for name, outputs in recorded.items():
            if outputs:
                setattr(model, name, _Replay([o.clone().requires_grad_() for o in outputs]))

        def loss_part() -> None:
            with _autocast(bf16, device):
                losses = model(batch)
            losses["total_loss"].backward()

        times["loss"] = _min_time(loss_part, repeat, device)
    finally:
        for name, module in originals.items():
            setattr(model, name, module)
    optimizer.zero_grad(set_to_none=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone", nargs="+", default=["Res18UNet", "Res50UNet"], choices=["Res18UNet", "Res50UNet"]
    )
    parser.add_argument("--batch", nargs="+", type=int, default=[2, 8], help="pairs per step")
    parser.add_argument(
        "--mode", nargs="+", default=list(MODES), choices=list(MODES), help="losses switched on"
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the 2D network and heads")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and images")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (the minimum is kept)")
    parser.add_argument("--size", nargs=2, type=int, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--voxels", type=int, default=35000, help="voxels per view")
    parser.add_argument(
        "--backend3d",
        nargs="+",
        default=["auto"],
        choices=["auto", "torch", "spconv", "triton"],
        help="3D network's sparse convolutions: pri3d's torch ops, spconv, spconv-triton (cuda), or auto "
        "(torch on the CPU; on cuda spconv's CUDA build, else triton, else torch); several are timed in "
        "turn, each in its own row",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    precision = ("bf16" if args.bf16 else "fp32") + (" + channels_last" if args.channels_last else "")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"# {where}, torch {torch.__version__}, "
        f"{args.size[0]}×{args.size[1]}, {precision}, 3D network: {', '.join(args.backend3d)}"
    )
    print(
        "| backbone | batch | mode | step (s) | pairs/s | original step (s) | speed-up | 3D network | corr. + loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    batches: dict[tuple[int, bool], dict] = {}
    for backbone in args.backbone:
        for batch_size in args.batch:
            for mode in args.mode:
                view, geo, depth = MODES[mode]
                key = (batch_size, geo)
                if key not in batches:
                    batches[key] = pair_batch(
                        batch_size, tuple(args.size), voxels=args.voxels, geometric_prior=geo
                    )
                    print(
                        f"<!-- batch {batch_size}{' with voxels' if geo else ''}: {batch_summary(batches[key])} -->"
                    )
                for backend3d in args.backend3d if geo else [None]:
                    model = Pri3D(backbone, view_invariant=view, geometric_prior=geo, depth=depth).to(device)
                    if geo:
                        model.backbone3d.backend = backend3d
                    if args.channels_last:  # as the trainer: 4-D (2D conv) tensors only
                        for tensor in [*model.parameters(), *model.buffers()]:
                            if tensor.dim() == 4:
                                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
                    batch = {
                        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batches[key].items()
                    }
                    if args.channels_last:  # as the trainer moves a batch
                        batch = {k: _channels_last(v) for k, v in batch.items()}
                    several = geo and len(args.backend3d) > 1
                    label = f"{mode} ({backend3d})" if several else mode
                    times = measure(model, batch, args.bf16, args.repeat, device)
                    original = (
                        ORIGINAL_STEP_S.get((backbone, batch_size, mode)) if device.type == "cpu" else None
                    )
                    speedup = f"{original / times['step']:.1f}×" if original else "n/a"
                    share_3d = f"{times['3d'] / times['step']:.0%}" if "3d" in times else "–"
                    print(
                        f"| {backbone} | {batch_size} | {label} | {times['step']:.2f} | {batch_size / times['step']:.2f} | "
                        f"{original if original else 'n/a'} | {speedup} | {share_3d} | {times['loss'] / times['step']:.1%} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
