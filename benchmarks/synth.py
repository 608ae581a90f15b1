"""Time `pri3d synth scannet`: scenes × frames at a resolution, end to end (render, encode, write).

python benchmarks/synth.py --scenes 10 --frames 100 --size 240x320 --workers 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from pri3d.cli_types import image_size
from pri3d.synth.generate import SynthConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument(
        "--size",
        type=image_size,
        default="240x320",
        help="colour and depth size, HEIGHTxWIDTH (default 240x320)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    config = SynthConfig(scenes=args.scenes, frames=args.frames, color_size=args.size, depth_size=args.size)
    times = []
    for _ in range(args.repeat):
        out = Path(tempfile.mkdtemp(prefix="pri3d-synth-bench-"))
        try:
            start = time.perf_counter()
            generate(out, config, workers=args.workers, progress=False)
            times.append(time.perf_counter() - start)
            size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
        finally:
            shutil.rmtree(out)
    frames = args.scenes * args.frames
    best = min(times)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"{args.scenes} scenes × {args.frames} frames at {args.size[0]}x{args.size[1]}, {args.workers} workers"
    )
    print(
        f"wall time: {best:.1f} s (best of {len(times)}), {frames / best:.1f} frames/s, output {size_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
