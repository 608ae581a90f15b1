"""A figure of generated data: frames (colour, depth, NYU40 labels) and the mesh seen from above.

It reads what was written to disk (scannet_frames_25k and the `_vh_clean_2.ply`), so the picture
shows the files a user gets, not the generator's internal state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pri3d.io.images import read_depth_png, read_label_png, read_rgb
from pri3d.io.scannet import read_mesh_ply
from pri3d.labels import NYU40_NAMES


def nyu40_palette() -> np.ndarray:
    """Fixed colours [41, 3] uint8 for NYU40 ids; 0 (unlabeled) is black."""
    rng = np.random.default_rng(40)
    palette = rng.integers(40, 255, size=(41, 3)).astype(np.uint8)
    palette[0] = 0
    return palette


def write_preview(
    root: str | Path, out_png: str | Path, scene: str | None = None, num_frames: int = 3
) -> Path:
    """Draw `num_frames` frames of one scene under `root` (a `pri3d synth` output) into `out_png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    frames_root = root / "scannet_frames_25k"
    scenes = sorted(p.name for p in frames_root.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))
    if not scenes:
        raise FileNotFoundError(f"{frames_root}: no scenes to preview")
    scene = scene or scenes[0]
    stems = sorted(p.stem for p in (frames_root / scene / "color").glob("*.jpg"))
    picks = [stems[i] for i in np.linspace(0, len(stems) - 1, min(num_frames, len(stems))).astype(int)]
    palette = nyu40_palette()

    fig, axes = plt.subplots(len(picks), 4, figsize=(16, 3.2 * len(picks)), squeeze=False)
    present: set[int] = set()
    for row, stem in enumerate(picks):
        color = read_rgb(frames_root / scene / "color" / f"{stem}.jpg")
        depth = read_depth_png(frames_root / scene / "depth" / f"{stem}.png").astype(np.float64) / 1000.0
        label = read_label_png(frames_root / scene / "label" / f"{stem}.png")
        present.update(np.unique(label).tolist())
        axes[row, 0].imshow(color)
        axes[row, 0].set_title(f"{scene} frame {int(stem)}: colour")
        shown = axes[row, 1].imshow(np.ma.masked_equal(depth, 0.0), cmap="turbo")
        axes[row, 1].set_title("depth (m), holes blank")
        fig.colorbar(shown, ax=axes[row, 1], fraction=0.035)
        axes[row, 2].imshow(palette[label])
        axes[row, 2].set_title("NYU40 labels")
        for ax in axes[row, :3]:
            ax.axis("off")
        axes[row, 3].axis("off")

    vertices, colors, _ = read_mesh_ply(root / "scans" / scene / f"{scene}_vh_clean_2.ply")
    top = fig.add_subplot(1, 4, 4) if len(picks) == 1 else fig.add_subplot(len(picks), 4, (4, 4 * len(picks)))
    image, extent = top_view(vertices, colors)
    top.imshow(image, extent=extent, origin="lower")
    top.set_title(f"mesh from above, no ceiling ({len(vertices):,} vertices)", fontsize=9)
    top.set_xlabel("x (m)")
    top.set_ylabel("y (m)")

    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i] / 255.0) for i in sorted(present) if i > 0]
    names = [NYU40_NAMES[i] for i in sorted(present) if i > 0]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def top_view(vertices: np.ndarray, colors: np.ndarray, cell: float = 0.02) -> tuple[np.ndarray, tuple]:
    """Orthographic view from above: per cell, the colour of the highest vertex below the ceiling.

    Returns an image [rows = y, cols = x, 3] (white where empty) and its (x0, x1, y0, y1) extent.
    """
    keep = vertices[:, 2] < vertices[:, 2].max() - 0.05
    v, c = vertices[keep], colors[keep]
    lo = v[:, :2].min(0)
    ij = np.floor((v[:, :2] - lo) / cell).astype(np.int64)
    shape = ij.max(0) + 1
    flat = ij[:, 1] * shape[0] + ij[:, 0]
    order = np.lexsort((v[:, 2], flat))  # by cell, then height: the last of each cell is the highest
    last = np.r_[flat[order][1:] != flat[order][:-1], True]
    image = np.full((shape[1] * shape[0], 3), 255, dtype=np.uint8)
    image[flat[order][last]] = c[order][last]
    hi = lo + shape * cell
    return image.reshape(shape[1], shape[0], 3), (lo[0], hi[0], lo[1], hi[1])
