"""The 3D network alone: MinkUNet34C forward + backward, pri3d's torch path vs spconv's or spconv-triton's.

Voxels come from `synthetic_batch.py` (room surfaces at 2 cm, ``--voxels`` per view, ``--batch``
views in one sparse tensor), on ``--device`` (cpu or cuda). For each path (``--backend``: torch,
spconv, triton; triton needs cuda and ``pip install "pri3d[triton]"``) it reports the minimum over
``--repeat`` runs (after a warm-up, which also compiles and autotunes Triton's kernels; the paths
take turns) of forward, backward and their sum, and how much of the forward is spent building
neighbour tables (spconv's or spconv-triton's ``get_indice_pairs*`` or pri3d's ``submanifold_map`` /
``downsample_map``; on cuda each of these calls is bracketed by synchronisations);
``--profile`` adds the top operators of one run (torch profiler, self CPU time).

``--bf16-gemms`` asks whether bfloat16 GEMMs would pay on this CPU for the torch path: it records
every dense GEMM of one forward + backward (the per-offset products, the centre offset's GEMM and
the weight gradients, with their shapes and transpositions; not the CSR segment sums), counts their
floating-point operations, replays each in float32 and in bfloat16 (the same shapes, one at a time, after one warm-up pass), and reports
their sums and the bound they set: the network's forward + backward if its GEMMs took their
bfloat16 time and everything else (gathers, sums, BatchNorm, the casts that bf16 would add) stayed
as it is. ``--block-pairs`` sets ``sparse_conv_torch.BLOCK_PAIRS`` (the per-offset GEMMs get
longer with larger blocks).

    PYTHONPATH=. python benchmarks/sparse_unet.py --batch 2 --voxels 35000 --backend spconv torch
    PYTHONPATH=. python benchmarks/sparse_unet.py --device cuda --batch 2 --voxels 35000 --backend torch triton
    PYTHONPATH=. python benchmarks/sparse_unet.py --backend torch --bf16-gemms --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import spconv.pytorch.ops as spconv_ops
import torch
from synthetic_batch import pair_batch

from pri3d.models import sparse_conv_torch
from pri3d.models.sparse_unet import MinkUNet34C


class _Timed:
    """Wraps a function and sums the seconds spent in it (``sync`` before and after each call)."""

    def __init__(self, fn: Callable, sync: Callable[[], None]) -> None:
        self.fn = fn
        self.sync = sync
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.sync()
            self.seconds += time.perf_counter() - start


def _patch(module: object, names: list[str], sync: Callable[[], None]) -> list[_Timed]:
    timers = []
    for name in names:
        timer = _Timed(getattr(module, name), sync)
        setattr(module, name, timer)
        timers.append(timer)
    return timers


class _GemmRecorder:
    """Records the operands' shapes and strides of ``torch.mm`` and ``Tensor.addmm_`` calls with
    dense operands while active (CSR × dense sums are left out)."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []

    def _record(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.layout == torch.strided and b.layout == torch.strided:
            self.calls.append((tuple(a.shape), a.stride(), tuple(b.shape), b.stride()))

    def __enter__(self) -> _GemmRecorder:
        self._mm, self._addmm_ = torch.mm, torch.Tensor.addmm_

        def mm(a, b, **kwargs):
            self._record(a, b)
            return self._mm(a, b, **kwargs)

        def addmm_(out, a, b, **kwargs):
            self._record(a, b)
            return self._addmm_(out, a, b, **kwargs)

        torch.mm, torch.Tensor.addmm_ = mm, addmm_
        return self

    def __exit__(self, *exc: object) -> None:
        torch.mm, torch.Tensor.addmm_ = self._mm, self._addmm_


def _replay_seconds(calls: list, dtype: torch.dtype) -> float:
    """Seconds of one pass over the recorded GEMMs in ``dtype`` (after a warm-up pass)."""
    operands = []
    for a_shape, a_stride, b_shape, b_stride in calls:
        # same memory layout as recorded: a transposed view stays a transposed view
        a = torch.empty_strided(a_shape, a_stride, dtype=dtype).normal_()
        b = torch.empty_strided(b_shape, b_stride, dtype=dtype).normal_()
        operands.append((a, b))
    seconds = 0.0
    for timed in (False, True):
        for a, b in operands:
            start = time.perf_counter()
            torch.mm(a, b)
            if timed:
                seconds += time.perf_counter() - start
    return seconds


def bf16_gemms(net: MinkUNet34C, coords: torch.Tensor, features: torch.Tensor, repeat: int) -> None:
    """Print the float32 / bfloat16 replay of the torch path's GEMMs and the speed-up they bound."""
    total = float("inf")
    for _ in range(repeat + 1):
        start = time.perf_counter()
        net(coords, features).square().mean().backward()
        total = min(total, time.perf_counter() - start)
        net.zero_grad(set_to_none=True)
    with _GemmRecorder() as recorder:
        net(coords, features).square().mean().backward()
    fp32 = _replay_seconds(recorder.calls, torch.float32)
    bf16 = _replay_seconds(recorder.calls, torch.bfloat16)
    bound = total / (total - fp32 + bf16)
    gflop = sum(2 * a[0] * a[1] * b[1] for a, _, b, _ in recorder.calls) / 1e9
    print(
        f"torch path, block {sparse_conv_torch.BLOCK_PAIRS} pairs: forward + backward {total:.2f} s; "
        f"{len(recorder.calls)} GEMMs, {gflop:.0f} GFLOP: float32 {fp32:.2f} s ({gflop / fp32:.0f} GFLOP/s), "
        f"bfloat16 {bf16:.2f} s ({fp32 / bf16:.2f}x); network with bfloat16 GEMMs at best {bound:.2f}x faster"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2, help="views in one sparse tensor")
    parser.add_argument("--voxels", type=int, default=35000, help="voxels per view")
    parser.add_argument(
        "--backend", nargs="+", default=["spconv", "torch"], choices=["spconv", "torch", "triton"]
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = PyTorch's default)")
    parser.add_argument("--profile", action="store_true", help="print the top operators of one run")
    parser.add_argument(
        "--bf16-gemms", action="store_true", help="bound what bfloat16 GEMMs would gain (torch path)"
    )
    parser.add_argument(
        "--block-pairs", type=int, default=0, help="sparse_conv_torch.BLOCK_PAIRS (0 = its default)"
    )
    args = parser.parse_args()
    if args.bf16_gemms and args.device != "cpu":
        parser.error("--bf16-gemms replays the torch path's GEMMs on the CPU; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.block_pairs:
        sparse_conv_torch.BLOCK_PAIRS = args.block_pairs
    batch = pair_batch((args.batch + 1) // 2, voxels=args.voxels)
    # both views of ceil(B / 2) pairs, as B samples of one sparse tensor
    coords = torch.cat([batch["voxels1"], batch["voxels2"]])
    coords[batch["voxels1"].shape[0] :, 0] += batch["batch_size"]
    features = torch.cat([batch["voxel_colors1"], batch["voxel_colors2"]])
    keep = coords[:, 0] < args.batch
    device = torch.device(args.device)
    coords, features = coords[keep].contiguous().to(device), features[keep].contiguous().to(device)
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    )
    print(f"{coords.shape[0]:,} voxels in {args.batch} views, {where}, torch {torch.__version__}")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if args.bf16_gemms:
        torch.manual_seed(0)
        bf16_gemms(MinkUNet34C(backend="torch"), coords, features, args.repeat)
        return

    map_timers = _patch(spconv_ops, ["get_indice_pairs"], sync) + _patch(
        sparse_conv_torch, ["submanifold_map", "downsample_map"], sync
    )
    if "triton" in args.backend:
        import spconv_triton.pytorch.ops as triton_ops  # optional: pip install "pri3d[triton]"

        map_timers += _patch(triton_ops, ["get_indice_pairs", "get_indice_pairs_implicit_gemm"], sync)
    torch.manual_seed(0)
    state = MinkUNet34C().state_dict()
    print(
        f"| {args.device} path | forward (s) | of which neighbour tables (s) | backward (s) | "
        "forward + backward (s) |"
    )
    print("|---|---|---|---|---|")
    nets = {backend: MinkUNet34C(backend=backend).to(device) for backend in args.backend}
    best: dict[str, tuple[float, float, float, float]] = {}
    # runs of the paths alternate, so that a slow spell of a shared machine hits both alike
    for run in range(args.repeat + 1):
        for backend, net in nets.items():
            net.load_state_dict(state)
            for timer in map_timers:
                timer.seconds = 0.0
            sync()
            start = time.perf_counter()
            out = net(coords, features)
            sync()
            middle = time.perf_counter()
            out.square().mean().backward()
            sync()
            end = time.perf_counter()
            net.zero_grad(set_to_none=True)
            result = (middle - start, sum(t.seconds for t in map_timers), end - middle, end - start)
            if run > 0 and (backend not in best or result[3] < best[backend][3]):
                best[backend] = result
    for backend, (forward, tables, backward, total) in best.items():
        print(f"| {backend} | {forward:.2f} | {tables:.2f} | {backward:.2f} | {total:.2f} |", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for backend, net in nets.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                net(coords, features).square().mean().backward()
            print(f"{backend}:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
