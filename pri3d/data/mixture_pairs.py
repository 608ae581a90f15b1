"""ScanNet + MegaDepth pre-training pairs in one dataset (the original's ``Mixture``, spec §2.4).

Indices below ``len(scannet)`` are ScanNet pairs, the rest MegaDepth pairs, as in the original; unlike
it, each part reads its own root (the original passed one path to both and never ran). The trainer's
sampler shuffles the concatenation, so a batch mixes the two at random in proportion to their sizes
(ScanNet's pair list against MegaDepth's scenes × pairs_per_scene); nothing balances them per batch.

With the geometric prior on, MegaDepth items carry the empty voxel chunk of a pair without a point
cloud (no voxels, all-False vp_valid{v}): ``collate_pairs`` keeps them in the batch, the 2D losses use
them, and the geometric-prior loss averages over the ScanNet pairs only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch.utils.data import Dataset

from pri3d.data.megadepth_pairs import MegaDepthPairs
from pri3d.data.pretrain_pairs import PairOptions, ScanNetPairs, no_chunk

__all__ = ["MixturePairs"]


class MixturePairs(Dataset):
    """ScanNet pairs followed by MegaDepth pairs; items have the keys of the ScanNet items.

    Args:
        scannet_root: output of ``pri3d preprocess scannet``. megadepth_root: the MegaDepth root.
        options: shared by both (crop/resize size, matches, threshold, augmentation, seed); the
            geometric prior applies to the ScanNet pairs.
        pair_list, pointcloud_dir: of the ScanNet part (see ``ScanNetPairs``).
        pairs_per_scene, min_overlap, scenes: of the MegaDepth part (see ``MegaDepthPairs``).
    """

    def __init__(
        self,
        scannet_root: str | Path,
        megadepth_root: str | Path,
        options: PairOptions | None = None,
        pair_list: str = "splits/overlap30.txt",
        pointcloud_dir: str | Path | None = None,
        pairs_per_scene: int = 4000,
        min_overlap: float = 0.3,
        scenes: list[str] | None = None,
    ):
        options = options or PairOptions()
        self.options = options
        self.scannet = ScanNetPairs(scannet_root, pair_list, options, pointcloud_dir)
        self.megadepth = MegaDepthPairs(
            megadepth_root,
            dataclasses.replace(options, geometric_prior=False),
            pairs_per_scene=pairs_per_scene,
            min_overlap=min_overlap,
            scenes=scenes,
        )

    def __len__(self) -> int:
        return len(self.scannet) + len(self.megadepth)

    def set_epoch(self, epoch: int) -> None:
        """Both parts move to ``epoch`` (MegaDepth draws its pairs for it)."""
        self.scannet.set_epoch(epoch)
        self.megadepth.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} mixture pairs")
        if index < len(self.scannet):
            return self.scannet[index]
        sample = self.megadepth[index - len(self.scannet)]
        sample["index"] = index
        if "skip" not in sample and self.options.geometric_prior:
            for v in (1, 2):
                for key, value in no_chunk(self.options.num_matches).items():
                    sample[f"{key}{v}"] = value
        return sample
