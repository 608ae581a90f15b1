"""Float32 noise of the 3D network's gradients, and why its CPU test compares with a smooth activation.

The same voxels in another row order are the same input summed in another order. This script runs
MinkUNet34C (torch CPU path, float32, one thread) on the voxels of
``tests/models/test_sparse_conv_torch.py::test_network_cpu_paths_match_float64_reference`` in
``--orders`` row orders, with ReLU (the network) and with SiLU (the test's `_smooth`), and prints per
order:

* the largest change of a parameter's gradient against the file order, as a share of that
  gradient's largest entry (a ReLU whose input lies within rounding of 0 passes or blocks its
  gradient depending on the order);
* the largest relative error of a parameter's gradient against the same network in float64, as a
  multiple of the measured float32 noise the test bounds it by (`NOISE_FACTOR` times that).

    PYTHONPATH=. python benchmarks/gradient_orders.py --orders 8
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "models"))
from test_sparse_conv_torch import (
    NOISE_FACTOR,
    _float32_noise,
    _outputs_and_grads,
    _relative,
    _smooth,
    _voxels,
)

from pri3d.models.sparse_unet import MinkUNet34C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=8, help="row orders besides the file order")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    torch.manual_seed(0)
    coords, features = _voxels(250)
    weights = MinkUNet34C().state_dict()
    upstream = torch.randn(
        coords.shape[0], 96, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    for name, smooth in (("ReLU", lambda net: net), ("SiLU", _smooth)):
        net = smooth(MinkUNet34C())
        net.load_state_dict(weights)
        reference = smooth(MinkUNet34C())
        reference.load_state_dict(weights)
        reference.double()
        _, grad_noise = _float32_noise(reference, coords, features.double(), upstream)
        _, want = _outputs_and_grads(reference, coords, features.double(), upstream)
        _, first = _outputs_and_grads(net, coords, features, upstream)
        print(f"{name}: float32 gradient noise {grad_noise:.2e}; the test allows {NOISE_FACTOR}x")
        for seed in range(args.orders):
            order = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(seed))
            _, grads = _outputs_and_grads(net, coords[order].contiguous(), features[order], upstream[order])
            change = max(float((grads[k] - first[k]).abs().max() / first[k].abs().max()) for k in first)
            error = max(_relative(grads[k], want[k]) for k in want) / grad_noise
            print(f"  order {seed}: largest gradient change {100 * change:.3g} % of its maximum, "
                  f"error vs float64 {error:.1f}x the noise")  # fmt: skip


if __name__ == "__main__":
    main()
