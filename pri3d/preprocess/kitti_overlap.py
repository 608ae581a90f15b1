"""Overlap of a KITTI frame with its partners: exact matching, and an exact bound that skips pairs.

A point of frame i (camera 2, back-projected from its valid depth with K2 = P2[:3, :3]) matches in a
partner frame j where it is in front of camera 2 (j), its **nearest pixel** ``floor(x + 0.5)`` lies in
frame j's image (pri3d's pixel-centre convention, :mod:`pri3d.geometry`) and frame j's depth there is
valid and within a threshold of the point's depth (spec §3.8). Camera i -> pixels of j is one 3x4
matrix ``K2 [R | t]`` per partner; its rows give z·u, z·v and z.

Most partners a hundred frames apart see little of frame i (a forward-driving camera leaves frame i's
points behind), so each pair is first bounded without projecting its points:

- frame i's points are grouped into blocks (image tiles x depth bins, :func:`point_blocks`); a block's
  points lie in the axis-aligned box of their camera coordinates;
- a point can only match if five linear functions of it are >= 0: z, z·u + z/2, (W - 1/2)·z - z·u,
  z·v + z/2, (H - 1/2)·z - z·v (in front, and u in [-1/2, W - 1/2), v in [-1/2, H - 1/2), the
  positions whose nearest pixel is in the image). Over a box a linear function is largest at
  ``w·centre + |w|·half_extent``; a block where one of the five stays below zero cannot match;
- the matches of a pair are therefore at most the points of the other blocks (:func:`reachable_blocks`),
  and ratio = m / (valid_i + valid_j - m) grows with m (its derivative is
  (valid_i + valid_j) / (valid_i + valid_j - m)² > 0, and the float division of the integers is correctly
  rounded, so it does not decrease either): a pair whose bound's ratio is <= min_ratio cannot be kept.

The pairs that pass are matched exactly (:func:`match_points`), on the points of the blocks from the
first reachable one to the last in block order (blocks are ordered so that for a partner ahead this
run holds few others); the points outside it are in blocks that cannot match. The kept pairs are
therefore those of matching every point of every pair, which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BLOCK_DEPTH_RATIO",
    "BLOCK_TILE",
    "PointBlocks",
    "match_points",
    "overlap_ratio",
    "point_blocks",
    "reachable_blocks",
]

#: Block tiles, (rows, cols) pixels: about 2 x 4 degrees at KITTI's focal length (721 px).
BLOCK_TILE = (25, 54)
#: Block depth bins: the depths of a bin's points are within this ratio of each other.
BLOCK_DEPTH_RATIO = 1.1
# A block is dropped only where a function stays below -_BOUND_MARGIN (pixel·metres, metres for z).
# Terms of these sums are below 1e8 for points within 10 km and focal lengths below 1e4 px, so float64
# rounding of the sums, of the boxes and of the exact path's projections (~1e-8 each) cannot carry a
# point the exact path keeps to the wrong side of the margin.
_BOUND_MARGIN = 1e-3


@dataclass
class PointBlocks:
    """Frame i's valid pixels and camera points grouped into blocks, each block a contiguous run.

    pixels: int64 [N] flat indices row * W + col in block order (see :func:`point_blocks`); points:
    float64 [4, N] their homogeneous camera points; starts, counts: int64 [B] first position and number
    of points of each block; boxes: float64 [7, B] each block's axis-aligned box of camera points as
    (centre x, y, z, half extent x, y, z, 1).
    """

    pixels: np.ndarray
    points: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    boxes: np.ndarray


def point_blocks(depth: np.ndarray, K: np.ndarray) -> PointBlocks:
    """Back-project a depth map's valid pixels in blocks of one :data:`BLOCK_TILE` tile and depth bin.

    Args:
        depth: float [H, W] metres, 0 invalid (as read from an annotated depth PNG); K: [3, 3] at H x W.
    """
    height, width = depth.shape
    pixels = np.flatnonzero(depth > 0)  # a bool mask: nonzero on floats is several times slower
    z = depth.ravel()[pixels].astype(np.float64)
    rows, cols = np.divmod(pixels, width)
    log_ratio = np.log(BLOCK_DEPTH_RATIO)
    depth_bin = np.floor(np.log(z) * (1 / log_ratio)).astype(np.int64)
    tiles_down, tiles_across = -(-height // BLOCK_TILE[0]), -(-width // BLOCK_TILE[1])
    tile = (rows // BLOCK_TILE[0]) * tiles_across + cols // BLOCK_TILE[1]
    # Blocks are ordered by how far a camera can drive forward before they leave its view, about
    # depth x (1 - the tile's offset from the principal point as a fraction of half the image): the
    # blocks a partner ahead still sees then form nearly one run, the exact path's slice.
    centre_row = (np.arange(tiles_down) + 0.5) * BLOCK_TILE[0] - 0.5
    centre_col = (np.arange(tiles_across) + 0.5) * BLOCK_TILE[1] - 0.5
    offset = np.maximum(
        np.abs(centre_row - K[1, 2])[:, None] / (height / 2), np.abs(centre_col - K[0, 2]) / (width / 2)
    )  # [tiles_down, tiles_across]
    bins_left = np.floor(np.log(np.clip(1 - offset, 0.05, 1)) / log_ratio).astype(np.int64).ravel()
    reach_bin = depth_bin + bins_left[tile]  # (reach_bin, tile) <-> (depth_bin, tile): the same blocks
    key = (reach_bin - reach_bin.min(initial=0)) * (tiles_down * tiles_across) + tile
    if key.max(initial=0) <= np.iinfo(np.uint16).max:
        key = key.astype(np.uint16)  # sorted by radix sort, several times faster
    order = np.argsort(key, kind="stable")
    sorted_key = key.take(order)
    new_block = np.empty(len(order), dtype=bool)
    new_block[:1] = True
    np.not_equal(sorted_key[1:], sorted_key[:-1], out=new_block[1:])
    starts = np.flatnonzero(new_block)
    counts = np.diff(starts, append=len(order))
    pixels, z, rows, cols = pixels.take(order), z.take(order), rows.take(order), cols.take(order)
    points = np.empty((4, len(pixels)))
    fx, skew, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    y_over_z = (rows - cy) / fy
    np.multiply((cols - cx - skew * y_over_z) / fx, z, out=points[0])
    np.multiply(y_over_z, z, out=points[1])
    points[2], points[3] = z, 1.0
    boxes = np.ones((7, len(starts)))
    if len(pixels):
        low = np.minimum.reduceat(points[:3], starts, axis=1)
        high = np.maximum.reduceat(points[:3], starts, axis=1)
        np.add(low, high, out=boxes[:3])
        np.subtract(high, low, out=boxes[3:6])
        boxes[:6] /= 2
    return PointBlocks(pixels, points, starts, counts, boxes)


def reachable_blocks(blocks: PointBlocks, projections: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Which blocks may hold a point whose nearest pixel lies in a partner's image, in front of it.

    Args:
        projections: [J, 3, 4] camera i -> pixels of each partner (rows z·u, z·v, z); shape: (H, W).
    Returns:
        bool [J, B]; False only where no point of the block can land in the partner's image.
    """
    height, width = shape
    zu, zv, z = projections[:, 0], projections[:, 1], projections[:, 2]  # [J, 4] each
    # [J, 5, 4]: the five functions that are >= 0 wherever a point can land in the image
    functions = np.stack((z, zu + 0.5 * z, (width - 0.5) * z - zu, zv + 0.5 * z, (height - 0.5) * z - zv), 1)
    weights = functions.reshape(-1, 4)  # [5J, 4]
    # [5J, 7] @ [7, B]: w · centre + |w| · half_extent + constant, each function's largest value on a box
    largest = np.concatenate((weights[:, :3], np.abs(weights[:, :3]), weights[:, 3:]), 1) @ blocks.boxes
    return (largest.reshape(len(projections), 5, -1) >= -_BOUND_MARGIN).all(axis=1)


def match_points(
    points: np.ndarray, projection: np.ndarray, depth_j: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Where frame i's points land in frame j, and whether they match there.

    Args:
        points: float64 [4, N] homogeneous camera points of frame i; projection: [3, 4] camera i ->
        pixels of j (rows z·u, z·v, z); depth_j: float [H, W] metres, 0 invalid; threshold: metres,
        |point depth - depth_j| must be below it.
    Returns:
        matched bool [N] and pixel_j int32 [N], the flat index row * W + col of the nearest pixel in
        frame j (meaningful where matched).
    """
    height, width = depth_j.shape
    projected = projection @ points  # [3, N]: z·u, z·v, z
    z, uv = projected[2], projected[:2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # z <= 0 fails the test below
        np.divide(uv, z, out=uv)
        uv += 0.5
        np.floor(uv, out=uv)  # nearest pixel (u, v)
        # int32: every in-image value converts exactly; one beyond int32 (inf included) converts to
        # int32's minimum (x86) or saturates (elsewhere), outside in the unsigned test either way; NaN
        # comes only from z = 0, which fails z > 0.
        col, row = uv.astype(np.int32)
    inside = col.view(np.uint32) < width
    inside &= row.view(np.uint32) < height
    inside &= z > 0
    pixel_j = row * width  # int32 wraps silently outside the image; those are set to 0 just below
    pixel_j += col
    pixel_j *= inside
    depth_there = depth_j.ravel().take(pixel_j)  # [N]; take is ~2x faster than fancy indexing here
    error = z - depth_there
    np.abs(error, out=error)
    matched = error < threshold
    matched &= depth_there > 0
    matched &= inside
    return matched, pixel_j


def overlap_ratio(matches: np.ndarray, valid_i: int, valid_j: np.ndarray) -> np.ndarray:
    """matches / (valid_i + valid_j - matches) per partner; 0 where neither frame has a valid pixel."""
    matches, valid_j = np.asarray(matches), np.asarray(valid_j)
    union = valid_i + valid_j - matches
    return np.where(union > 0, matches / np.maximum(union, 1), 0.0)
