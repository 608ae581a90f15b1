"""Overlap of RGB-D frames: which frames of a scan see the same surfaces.

The definition is the original's (PointContrast's ``compute_full_overlapping.py``, reference spec
§3.3). Each frame's valid depth is back-projected to world space and voxel-downsampled at
``voxel_size`` = 5 cm to one point per voxel (the centroid of the frame's points in it). Then

    m[i, j] = fraction of frame j's points that have a point of frame i within ``radius``
              (1.5 × voxel_size = 7.5 cm),
    score(i, j) = max(m[i, j], m[j, i]),

and a pair is kept for pre-training when its score is at least a threshold (0.3).

The original ran a KD-tree radius query for every point of j against every other frame i in a
Python loop: O(K² · P) queries for K frames of P points (≈1.5 h for a 300-view scene).
:func:`overlap_matrix` gives the same m, exactly, with a few vectorised passes:

1. All frames' points are grouped by world cell (a 5 cm grid, ``floor(p / cell_size)``). Points
   of different frames in one cell are centroids of the same small piece of surface, so they lie
   close together; each cell keeps the bounding box of its points (centre c, half-diagonal h).
2. Each cell gets a bitmask of the frames that have a point in it, OR-ed over the cells that can
   hold a point within ``radius`` of it (the 117 cells of a 5×5×5 block minus its corners, for
   r = 1.5 cells). Only frames in that mask can be hit from the cell: the (cell, frame) candidates.
3. For each frame i, one KD-tree over its points answers, for all its candidate cells at once,
   the distance d from the cell's centre c to frame i's nearest point. By the triangle inequality
   every point of the cell is within d + h of that point and at least d - h from all of frame i:
   d + h < r means *every* point in the cell has a neighbour in frame i, d - h ≥ r means *none*
   has. The few cells in between (frame i's visible border passes near them) are split into
   4×4×4 sub-cells decided the same way; only the points of undecided sub-cells are queried one
   by one.
4. Hits are counted per (frame i, frame j) with one sparse matrix product per level (whole cells,
   whole sub-cells) and a bincount (the points queried one by one).

The work is one KD query per (cell, nearby frame) instead of one per (point, frame): the number of
frames that see a cell is the speed-up, and no answer is approximated.

Frames are downsampled with Open3D's grid rule (:func:`voxel_downsample`), so the scores are the
original's; ``benchmarks/overlap.py`` checks them against the original's per-point loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

__all__ = [
    "VOXEL_SIZE",
    "neighbour_offsets",
    "overlap_matrix",
    "overlap_matrix_kdtree",
    "pack_voxel_keys",
    "pair_scores",
    "voxel_downsample",
]

#: The original's voxel size (``--voxel_size 0.05``); the match radius is 1.5 × this.
VOXEL_SIZE = 0.05

# Voxel coordinates are packed into one int64 key, 21 bits per axis: ±1,048,575 voxels, i.e.
# ±52 km at 5 cm. Adding a packed offset to a packed key offsets each axis (no carries) as long as
# every coordinate stays inside the range, which _check_key_range guarantees with a margin.
_KEY_BITS = 21
_KEY_BIAS = 1 << (_KEY_BITS - 1)
_KEY_MARGIN = 8
# A cell that frame i's border cuts is split into _REFINE³ sub-cells before single points are queried.
_REFINE = 4


def _check_key_range(coords: np.ndarray, what: str) -> None:
    if coords.size and np.abs(coords).max() >= _KEY_BIAS - _KEY_MARGIN:
        raise ValueError(
            f"{what}: voxel coordinates reach {int(np.abs(coords).max())}, beyond the packable "
            f"±{_KEY_BIAS - _KEY_MARGIN}; are the points in metres and the poses valid?"
        )


def pack_voxel_keys(coords: np.ndarray) -> np.ndarray:
    """One sortable int64 key per integer voxel coordinate. [N, 3] int -> [N] int64.

    Keys order voxels lexicographically by (x, y, z), and ``pack(a) + pack(b) - pack(0)`` is
    ``pack(a + b)`` for coordinates inside the supported range (±1,048,567 per axis).
    """
    coords = np.asarray(coords, dtype=np.int64)
    _check_key_range(coords, "pack_voxel_keys")
    biased = coords + _KEY_BIAS
    return (biased[:, 0] << (2 * _KEY_BITS)) | (biased[:, 1] << _KEY_BITS) | biased[:, 2]


def voxel_downsample(points: np.ndarray, voxel_size: float = VOXEL_SIZE) -> np.ndarray:
    """The centroid of the points in each occupied voxel, with Open3D's ``voxel_down_sample`` grid.

    As Open3D (which the original used), the grid is anchored half a voxel below the cloud's
    minimum: the voxel of p is ``floor((p - (min(points) - voxel_size / 2)) / voxel_size)``. The
    grid therefore moves with the cloud (translating the cloud translates the result), unlike the
    package's world grid ``floor(p / voxel_size)``; keeping Open3D's rule keeps the original's
    overlap scores.

    Args:
        points: [N, 3] float world points (no NaN/inf).
    Returns:
        [V, 3] float64 centroids, one per occupied voxel, sorted by voxel (x, y, z).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {list(points.shape)}")
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    if len(points) == 0:
        return np.zeros((0, 3))
    if not np.isfinite(points).all():
        raise ValueError("points contain NaN or inf; drop invalid pixels and frames first")
    origin = points.min(axis=0) - voxel_size / 2
    keys = pack_voxel_keys(np.floor((points - origin) / voxel_size).astype(np.int64))
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.stack([np.bincount(inverse, weights=points[:, axis]) for axis in range(3)], axis=1)
    return sums / counts[:, None]


def neighbour_offsets(cell_size: float, radius: float) -> np.ndarray:
    """Offsets [M, 3] int64 of the cells that can hold a point within ``radius`` of a point in cell 0.

    A cell at offset o is needed when the gap between the two cubes, ``cell_size ·
    ||max(|o| - 1, 0)||``, is below ``radius``. For radius = 1.5 cells this is the 5×5×5 block
    without its 8 corners (117 offsets); for radius = 1 cell, the 27 neighbours.
    """
    reach = int(np.ceil(radius / cell_size))
    span = range(-reach, reach + 1)
    offsets = np.array(list(itertools.product(span, span, span)), dtype=np.int64)
    gap = np.maximum(np.abs(offsets) - 1, 0) * cell_size
    return offsets[(gap**2).sum(axis=1) < radius**2]


def _check_clouds(clouds: Sequence[np.ndarray]) -> list[np.ndarray]:
    checked = []
    for k, cloud in enumerate(clouds):
        cloud = np.asarray(cloud, dtype=np.float64)
        if cloud.ndim != 2 or cloud.shape[1] != 3:
            raise ValueError(f"cloud {k} must be [P, 3], got shape {list(cloud.shape)}")
        if not np.isfinite(cloud).all():
            raise ValueError(f"cloud {k} contains NaN or inf (an invalid pose?)")
        checked.append(cloud)
    return checked


def _ratios(hits: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """m [K, K] from hit counts [K, K] (hits[i, j]: points of j near i) and cloud sizes [K].

    An empty frame overlaps nothing (m = 0; the original divided by zero), and m[i, i] = 1.
    """
    m = np.divide(hits, sizes[None, :], out=np.zeros(hits.shape), where=sizes[None, :] > 0)
    np.fill_diagonal(m, 1.0)
    return m


class _Level:
    """Groups of points at one grid level: contiguous runs of the sorted points.

    starts [G] (first sorted position of each group; one past the last is ``end``), centres [G, 3]
    and half_diagonals [G] of each group's bounding box, and counts [G, K] (points per frame).
    """

    def __init__(
        self,
        starts: np.ndarray,
        end: int,
        sorted_points: np.ndarray,
        sorted_frames: np.ndarray,
        num_frames: int,
    ) -> None:
        self.starts = starts
        self.ends = np.r_[starts[1:], end]
        low = np.minimum.reduceat(sorted_points, starts, axis=0)  # [G, 3]
        high = np.maximum.reduceat(sorted_points, starts, axis=0)
        self.centres = (low + high) / 2
        self.half_diagonals = np.linalg.norm(high - low, axis=1) / 2
        group_of = np.repeat(np.arange(len(starts)), self.ends - starts)  # [N]
        self.counts = sparse.csr_matrix(
            (np.ones(end), (group_of, sorted_frames)), shape=(len(starts), num_frames)
        )  # duplicates are summed


def _expand_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for every (s, e). [R], [R] -> [sum(e - s)] int64."""
    lengths = ends - starts
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def _nested_groups(
    clouds: list[np.ndarray], cell_size: float, num_frames: int
) -> tuple[np.ndarray, np.ndarray, _Level, _Level, np.ndarray]:
    """All points sorted so that every cell, and every sub-cell, is a contiguous run.

    Level 1 splits each cell into _REFINE³ sub-cells; cell coordinates are derived from sub-cell
    coordinates by floor division, so the nesting is exact whatever the float rounding. Returns
    sorted points [N, 3], their frames [N], the two levels, and the sorted cell keys [V].
    """
    sizes = [len(c) for c in clouds]
    points = np.concatenate(clouds)  # [N, 3]
    fine = np.floor(points / (cell_size / _REFINE)).astype(np.int64)  # [N, 3]
    cell_keys = pack_voxel_keys(fine // _REFINE)  # [N]
    sub = fine % _REFINE  # [N, 3] in 0.._REFINE-1 (floor modulo)
    sub_index = (sub[:, 0] * _REFINE + sub[:, 1]) * _REFINE + sub[:, 2]  # [N]
    del fine, sub
    order = np.lexsort((sub_index, cell_keys))  # by cell, then sub-cell
    sorted_points = points[order]
    sorted_frames = np.repeat(np.arange(num_frames), sizes)[order]
    del points
    cell_keys, sub_index = cell_keys[order], sub_index[order]
    new_cell = np.r_[True, cell_keys[1:] != cell_keys[:-1]]
    new_sub = new_cell | np.r_[True, sub_index[1:] != sub_index[:-1]]
    cells = _Level(np.flatnonzero(new_cell), len(order), sorted_points, sorted_frames, num_frames)
    subcells = _Level(np.flatnonzero(new_sub), len(order), sorted_points, sorted_frames, num_frames)
    return sorted_points, sorted_frames, cells, subcells, cell_keys[cells.starts]


def overlap_matrix(
    clouds: Sequence[np.ndarray], radius: float = 1.5 * VOXEL_SIZE, cell_size: float = VOXEL_SIZE
) -> np.ndarray:
    """m[i, j] = fraction of the points of cloud j that have a point of cloud i within ``radius``.

    Exact (the same numbers as :func:`overlap_matrix_kdtree`, up to float rounding at exactly
    ``radius``), computed per (cell, nearby frame) as the module docstring explains. A cell that
    frame i's border cuts is split into ``_REFINE``-times smaller sub-cells, decided the same way,
    before its remaining points are queried one by one.

    Args:
        clouds: K arrays [P_k, 3] of world points, normally :func:`voxel_downsample` output.
        radius: match distance in metres ("within" means distance < radius).
        cell_size: the grouping grid in metres, at least radius / 8 (any such value gives the same
            m; about the downsampling voxel is fastest).
    Returns:
        m: [K, K] float64 in [0, 1], m[i, i] = 1, not symmetric (see :func:`pair_scores`).
    """
    clouds = _check_clouds(clouds)
    if radius <= 0 or cell_size <= 0:
        raise ValueError(f"radius and cell_size must be > 0, got {radius} and {cell_size}")
    if radius > _KEY_MARGIN * cell_size:  # neighbour offsets must stay inside the key margin
        raise ValueError(
            f"cell_size must be at least radius / {_KEY_MARGIN}, got {cell_size} for radius {radius}"
        )
    num_frames = len(clouds)
    sizes = np.array([len(c) for c in clouds], dtype=np.int64)
    num_points = int(sizes.sum())
    if num_frames == 0 or num_points == 0:
        return _ratios(np.zeros((num_frames, num_frames)), sizes)
    # 1. Nested grids (cells, and sub-cells of them), every group a contiguous run of the sorted points.
    sorted_points, sorted_frames, cells, subcells, cell_keys = _nested_groups(clouds, cell_size, num_frames)
    num_cells = len(cell_keys)
    # Sub-cells of cell c are subcells first_sub[c] .. first_sub[c + 1] - 1.
    first_sub = np.searchsorted(subcells.starts, np.r_[cells.starts, num_points])

    # 2. Frame bitmask per cell, OR-ed over the cells within reach: [V, W] uint64.
    words = (num_frames + 63) // 64
    seen = np.zeros((num_cells, words), dtype=np.uint64)
    cell_rows, cell_frames = cells.counts.nonzero()
    np.bitwise_or.at(
        seen,
        (cell_rows, cell_frames // 64),
        np.left_shift(np.uint64(1), (cell_frames % 64).astype(np.uint64)),
    )
    nearby = np.zeros_like(seen)
    zero_key = pack_voxel_keys(np.zeros((1, 3), np.int64))[0]
    for offset_key in pack_voxel_keys(neighbour_offsets(cell_size, radius)) - zero_key:
        target = cell_keys + offset_key
        index = np.minimum(np.searchsorted(cell_keys, target), num_cells - 1)
        found = cell_keys[index] == target
        nearby[found] |= seen[index[found]]
    # (frame, cell) candidates grouped by frame: nonzero of [K, V] comes sorted by frame.
    little_endian = nearby.astype("<u8", copy=False).view(np.uint8)  # bit b of word w -> column 64 w + b
    bits = np.unpackbits(little_endian, axis=1, bitorder="little")[:, :num_frames]
    cand_frames, cand_cells = np.nonzero(bits.T)
    frame_starts = np.searchsorted(cand_frames, np.arange(num_frames + 1))

    # 3. Per frame i: the nearest point of i to a group's centre decides the whole group; groups
    # it cannot decide are split (cells into sub-cells, sub-cells into points).
    empty = np.zeros(0, np.int64)
    whole = {level: ([empty], [empty]) for level in (0, 1)}  # level -> (frames, groups) hit as a whole
    hit_pairs = []  # flat i * K + j, one per point of j queried alone that hits frame i
    for i in range(num_frames):
        ids = cand_cells[frame_starts[i] : frame_starts[i + 1]]
        if len(ids) == 0 or sizes[i] == 0:
            continue
        tree = cKDTree(clouds[i])
        for level, groups in enumerate((cells, subcells)):
            h = groups.half_diagonals[ids]
            bound = np.nextafter(radius + h.max(), np.inf)
            distance, _ = tree.query(groups.centres[ids], k=1, distance_upper_bound=bound)
            all_hit = distance + h < radius
            whole[level][0].append(np.full(int(all_hit.sum()), i))
            whole[level][1].append(ids[all_hit])
            mixed = ids[~all_hit & (distance - h < radius)]
            if level == 0:
                ids = _expand_ranges(first_sub[mixed], first_sub[mixed + 1])
            else:
                ids = _expand_ranges(subcells.starts[mixed], subcells.ends[mixed])
            if len(ids) == 0:
                break
        else:
            distance, _ = tree.query(
                sorted_points[ids], k=1, distance_upper_bound=np.nextafter(radius, np.inf)
            )
            hit_pairs.append(i * num_frames + sorted_frames[ids[distance < radius]])

    # 4. Count: whole groups via [K, G] @ [G, K] per level; single points via bincount.
    hits = np.zeros((num_frames, num_frames))
    for level, groups in enumerate((cells, subcells)):
        frames, ids = (np.concatenate(parts) for parts in whole[level])
        incidence = sparse.csr_matrix(
            (np.ones(len(ids)), (frames, ids)), shape=(num_frames, len(groups.starts))
        )
        hits += (incidence @ groups.counts).toarray()
    if hit_pairs:
        hits += np.bincount(np.concatenate(hit_pairs), minlength=num_frames**2).reshape(num_frames, -1)
    return _ratios(hits, sizes)


def overlap_matrix_kdtree(clouds: Sequence[np.ndarray], radius: float = 1.5 * VOXEL_SIZE) -> np.ndarray:
    """The same m as :func:`overlap_matrix`, by the direct definition: one KD-tree per frame i and
    a nearest-neighbour query of every point of every other frame j (vectorised per pair).

    O(K² · P log P); the reference for tests and benchmarks, too slow for whole scans.
    """
    clouds = _check_clouds(clouds)
    num_frames = len(clouds)
    sizes = np.array([len(c) for c in clouds], dtype=np.int64)
    hits = np.zeros((num_frames, num_frames))
    bound = np.nextafter(radius, np.inf)
    for i in range(num_frames):
        if sizes[i] == 0:
            continue
        tree = cKDTree(clouds[i])
        for j in range(num_frames):
            if i != j and sizes[j]:
                distance, _ = tree.query(clouds[j], k=1, distance_upper_bound=bound)
                hits[i, j] = np.count_nonzero(distance < radius)
    return _ratios(hits, sizes)


def pair_scores(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j of an overlap matrix with their score max(m[i, j], m[j, i]).

    Args:
        m: [K, K] from :func:`overlap_matrix`.
    Returns:
        first [Q] int64, second [Q] int64 (first < second, row-major order), score [Q] float64,
        with Q = K (K - 1) / 2.
    """
    m = np.asarray(m)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"overlap matrix must be [K, K], got shape {list(m.shape)}")
    first, second = np.triu_indices(len(m), k=1)
    return first, second, np.maximum(m[first, second], m[second, first])
