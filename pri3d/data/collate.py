"""Batch pre-training pairs: dense tensors are stacked, voxel chunks are concatenated.

Voxel chunks differ in size, so `voxels{v}` of the B samples become one [N, 4] int32 table
(batch index, x, y, z) as sparse-convolution libraries expect, `voxel_colors{v}` one [N, 3] table,
and each sample's `vp_voxel{v}` indices are shifted to rows of that table.
Samples that failed to load (`{"skip": reason}`) are dropped and reported under `skipped`.

A pair whose scene has no point cloud (no voxels) stays in the batch: the view-invariant and depth
losses use it as any other pair, and its all-False `vp_valid{v}` rows take it out of the
geometric-prior loss, which averages over the pairs that have matches (`batched_info_nce`). So the
other pairs' 3D loss is exactly what it would be without it, where dropping the sample would also
shrink the 2D losses' batch. Such pairs are counted under `counts["pairs_without_point_cloud"]`.
A micro-batch in which no pair has a cloud (e.g. MegaDepth pairs of a Mixture) is kept too: its voxel
tables are empty and the model gives it a geometric-prior loss of 0 (`pri3d.models.pri3d`).
"""

from __future__ import annotations

import torch

_VIEWS = (1, 2)


def collate_pairs(samples: list[dict]) -> dict:
    """Collate `ScanNetPairs` items. Returns a dict with `batch_size`, `skipped` (list of reasons)
    and, with voxel chunks, `counts` (named counters the trainer adds up)."""
    skipped = [s["skip"] for s in samples if "skip" in s]
    samples = [s for s in samples if "skip" not in s]
    batch: dict = {"batch_size": len(samples), "skipped": skipped}
    if not samples:
        return batch
    batch["index"] = torch.tensor([s["index"] for s in samples])
    batch["scene"] = [s["scene"] for s in samples]
    batch["frames"] = [s["frames"] for s in samples]
    dense = [k for k in samples[0] if isinstance(samples[0][k], torch.Tensor) and not _is_chunk_key(k)]
    for key in dense:
        batch[key] = torch.stack([s[key] for s in samples])
    if "voxels1" in samples[0]:
        batch["counts"] = {"pairs_without_point_cloud": sum(len(s["voxels1"]) == 0 for s in samples)}
        for v in _VIEWS:
            counts = [len(s[f"voxels{v}"]) for s in samples]
            offsets = torch.tensor([0, *counts[:-1]]).cumsum(0)
            batch_index = torch.repeat_interleave(
                torch.arange(len(samples), dtype=torch.int32), torch.tensor(counts)
            )
            coords = torch.cat([s[f"voxels{v}"] for s in samples])
            batch[f"voxels{v}"] = torch.cat([batch_index[:, None], coords], 1)  # [N, 4] (b, x, y, z)
            batch[f"voxel_colors{v}"] = torch.cat([s[f"voxel_colors{v}"] for s in samples])
            # a pair without voxels would point past its (empty) rows: send its masked rows to row 0
            batch[f"vp_voxel{v}"] = torch.stack(
                [
                    s[f"vp_voxel{v}"] + o if n else s[f"vp_voxel{v}"]
                    for s, o, n in zip(samples, offsets, counts)
                ]
            )
            batch[f"vp_pixel{v}"] = torch.stack([s[f"vp_pixel{v}"] for s in samples])
            batch[f"vp_valid{v}"] = torch.stack([s[f"vp_valid{v}"] for s in samples])
    return batch


def _is_chunk_key(key: str) -> bool:
    return key.startswith(("voxels", "voxel_colors", "vp_"))
