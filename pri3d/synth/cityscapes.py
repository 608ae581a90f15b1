"""Write generated street photos in Cityscapes' layout (leftImg8bit + gtFine label ids).

Output layout under `out`::

    synth_settings.json
    leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_000019_leftImg8bit.png     8-bit RGB
    gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_labelIds.png      8-bit Cityscapes label ids

Each photo is taken on its own procedural street (`pri3d.synth.street`) from a car's roof-level camera
with Cityscapes' field of view (fx = 2262.52 px at 2048 px width); labels are exact to the rendered
geometry. Cities carry Cityscapes' own names (train cities for train, Frankfurt, Lindau and Münster
for val), several photos per city; frame 000019 is the annotated frame of a Cityscapes snippet.
An image is seeded by (seed, split, index), so re-running skips finished images and the output does
not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pri3d.geometry import scale_intrinsics
from pri3d.io.atomic import atomic_write
from pri3d.synth.outdoor import render
from pri3d.synth.settings import check_and_record_settings
from pri3d.synth.street import street_photo

#: Cityscapes' image size (height, width) and its left camera's intrinsics at that size.
CITYSCAPES_SIZE = (1024, 2048)
_K_CITYSCAPES = np.array([[2262.52, 0.0, 1096.98], [0.0, 2265.30, 513.137], [0.0, 0.0, 1.0]])
_CAMERA_HEIGHT_M = 1.22
CITIES = {
    "train": ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg"),
    "val": ("frankfurt", "lindau", "munster"),
}
_IMAGES_PER_CITY = 10
_SPLIT_SEEDS = {"train": 0, "val": 1}


@dataclass
class CityscapesSynthConfig:
    """Generator settings. Sizes are (height, width)."""

    train: int = 30
    val: int = 10
    size: tuple[int, int] = (256, 512)
    seed: int = 0

    def __post_init__(self) -> None:
        self.size = tuple(int(v) for v in self.size)  # type: ignore[assignment]
        checks = {"train": self.train >= 0, "val": self.val >= 0, "size": min(self.size) >= 8}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid Cityscapes synth option {bad[0]}={getattr(self, bad[0])!r}")


def image_stem(split: str, index: int) -> tuple[str, str]:
    """(city, stem) of image `index` of `split`: ``aachen``, ``aachen_000003_000019``."""
    cities = CITIES[split]
    city = cities[(index // _IMAGES_PER_CITY) % len(cities)]
    sequence = index % _IMAGES_PER_CITY + _IMAGES_PER_CITY * (index // (_IMAGES_PER_CITY * len(cities)))
    return city, f"{city}_{sequence:06d}_000019"


def image_paths(out: Path, split: str, index: int) -> tuple[Path, Path]:
    """(leftImg8bit colour, gtFine labelIds) paths of image `index` of `split`."""
    city, stem = image_stem(split, index)
    return (
        out / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
        out / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
    )


def intrinsics_for(size: tuple[int, int]) -> np.ndarray:
    """Cityscapes' left-camera intrinsics at (height, width), scaled as `geometry.scale_intrinsics`."""
    return scale_intrinsics(torch.from_numpy(_K_CITYSCAPES), CITYSCAPES_SIZE, size).numpy()


def generate_cityscapes(
    out: str | Path, config: CityscapesSynthConfig, workers: int = 1, progress: bool = True
) -> dict:
    """Write `config.train` + `config.val` images under `out`; returns a summary. Finished images are kept."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_and_record_settings(
        out / "synth_settings.json", asdict(config), "Cityscapes data", may_change=("train", "val")
    )
    jobs = [
        (out, config, split, i)
        for split, count in (("train", config.train), ("val", config.val))
        for i in range(count)
        if not all(p.is_file() for p in image_paths(out, split, i))
    ]
    start = time.perf_counter()
    from tqdm import tqdm

    total = config.train + config.val
    with tqdm(
        total=total, initial=total - len(jobs), unit="image", desc="synth cityscapes", disable=not progress
    ) as bar:
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("spawn").Pool(
                min(workers, len(jobs)), initializer=_worker_init
            ) as pool:
                for _ in pool.imap_unordered(_write_image_job, jobs, chunksize=4):
                    bar.update(1)
        else:
            for job in jobs:
                _write_image_job(job)
                bar.update(1)
    return {
        "out": str(out),
        "train": config.train,
        "val": config.val,
        "size": list(config.size),
        "generated": len(jobs),
        "skipped_existing": total - len(jobs),
        "cities": {
            split: sorted({image_stem(split, i)[0] for i in range(n)})
            for split, n in (("train", config.train), ("val", config.val))
        },
        "seconds": time.perf_counter() - start,
    }


def write_image(out: Path, config: CityscapesSynthConfig, split: str, index: int) -> None:
    """Render image `index` of `split` and write its colour and label files (label first)."""
    rng = np.random.default_rng([config.seed, _SPLIT_SEEDS[split], index])
    scene, pose = street_photo(rng, _CAMERA_HEIGHT_M)
    height, width = config.size
    view = render(scene, intrinsics_for(config.size), pose, height, width)
    color_path, label_path = image_paths(out, split, index)
    for path, pixels in ((label_path, view.label), (color_path, view.color)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as file:
            Image.fromarray(pixels).save(file, format="PNG")


def _worker_init() -> None:
    torch.set_num_threads(1)


def _write_image_job(job: tuple[Path, CityscapesSynthConfig, str, int]) -> None:
    write_image(*job)
