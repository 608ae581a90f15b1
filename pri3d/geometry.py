"""Camera geometry, pixel↔pixel and voxel↔pixel correspondences, voxelisation.

Pure tensor functions: no I/O, no module state. Every function follows the device of its inputs
and computes in their promoted floating dtype (integer depth becomes float); leading batch
dimensions ``...`` are accepted where noted.

Conventions used by the whole package (other modules refer here instead of restating them):

* **Pixels.** Pixel indices are ordered (row, col). Pixel centres lie at integer coordinates:
  pixel (r, c) covers [c - 0.5, c + 0.5) × [r - 0.5, r + 0.5) of the continuous image plane,
  whose coordinates are u = col (to the right) and v = row (down). Rounding a continuous
  position to a pixel is ``floor(x + 0.5)`` (nearest pixel, also for negative x), never
  truncation toward zero.
* **Projection.** A camera-space point (x, y, z) projects to u = fx·x/z + cx, v = fy·y/z + cy
  (a skew K[0, 1], if any, adds skew·y/z to u). ScanNet's intrinsics follow this convention,
  e.g. cx = 159.5 at width 320.
* **Intrinsics** K are 3×3, in pixels, at the resolution of the image they are used with. A 4×4
  matrix (as ScanNet stores them) is accepted wherever K is an input; only K[:3, :3] is read.
* **Poses.** ``camera_to_world`` is the 4×4 rigid transform ScanNet stores in ``pose/<id>.txt``;
  ``world_to_camera`` is its inverse. The camera frame has x right, y down, z forward.
* **Depth** is in metres, one value per pixel along the camera z axis. A depth is valid iff it
  is finite and > 0; 0 is the invalid value written by the data pipeline.
* **Voxels.** The voxel of a point p is ``floor(p / voxel_size)`` per axis (floor, so -0.01 with
  voxel_size 0.02 is voxel -1). Voxel (i, j, k) covers [i·s, (i+1)·s) × ... and its centre is
  ((i, j, k) + 0.5)·s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "backproject_depth",
    "depth_to_world",
    "invert_rigid",
    "pixel_correspondences",
    "points_in_frustum",
    "project_points",
    "sample_pixel_correspondences",
    "scale_intrinsics",
    "sparse_quantize",
    "transform_points",
    "valid_depth",
    "voxel_pixel_correspondences",
    "voxelize",
]

Offset = Sequence[float] | torch.Tensor  # (row, col), or [B, 2] in the batched sampler


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted floating dtype of ``tensors`` (default dtype if none is floating)."""
    floats = [t.dtype for t in tensors if t.is_floating_point()]
    if not floats:
        return torch.get_default_dtype()
    dtype = floats[0]
    for other in floats[1:]:
        dtype = torch.promote_types(dtype, other)
    return dtype


def _intrinsics3x3(K: torch.Tensor) -> torch.Tensor:
    if K.shape[-2:] not in ((3, 3), (4, 4)):
        raise ValueError(f"intrinsics must be [..., 3, 3] or [..., 4, 4], got shape {tuple(K.shape)}")
    return K[..., :3, :3]


def valid_depth(depth: torch.Tensor) -> torch.Tensor:
    """Validity mask of a depth map: finite and > 0. Same shape as ``depth``, bool."""
    if not depth.is_floating_point():
        return depth > 0
    return torch.isfinite(depth) & (depth > 0)


def scale_intrinsics(K: torch.Tensor, old_hw: tuple[int, int], new_hw: tuple[int, int]) -> torch.Tensor:
    """Intrinsics of an image resized from ``old_hw`` = (H, W) to ``new_hw`` = (H', W').

    fx (and the skew) scale by W'/W, fy by H'/H; the principal point scales by (W'-1)/(W-1) and
    (H'-1)/(H-1), as the original's ``adjust_intrinsic``. For a principal point at the image
    centre ((W-1)/2) this equals the exact pixel-centre mapping u' = (u + 0.5)·W'/W - 0.5.

    Args:
        K: [..., 3, 3] or [..., 4, 4] intrinsics at ``old_hw``.
    Returns:
        A new tensor shaped like ``K`` (the rest of a 4×4 is copied unchanged).
    """
    _intrinsics3x3(K)
    (old_h, old_w), (new_h, new_w) = old_hw, new_hw
    if min(old_h, old_w) < 2 or min(new_h, new_w) < 1:
        raise ValueError(f"cannot scale intrinsics from size {old_hw} to {new_hw}")
    out = K.clone()
    sx, sy = new_w / old_w, new_h / old_h
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 0, 2] = K[..., 0, 2] * ((new_w - 1) / (old_w - 1))
    out[..., 1, 2] = K[..., 1, 2] * ((new_h - 1) / (old_h - 1))
    return out


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms [R | t]: [R^T | -R^T t]. ``T``: [..., 4, 4] -> [..., 4, 4].

    Exact for rotations (no general matrix inverse); do not use on transforms with scale.
    """
    if T.shape[-2:] != (4, 4):
        raise ValueError(f"rigid transform must be [..., 4, 4], got shape {tuple(T.shape)}")
    R_t = T[..., :3, :3].transpose(-1, -2)  # [..., 3, 3]
    out = torch.zeros_like(T)
    out[..., :3, :3] = R_t
    out[..., :3, 3] = -(R_t @ T[..., :3, 3:4]).squeeze(-1)
    out[..., 3, 3] = 1
    return out


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply 4×4 transforms to points. ``T``: [..., 4, 4], ``points``: [..., N, 3] -> [..., N, 3]."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    return points @ R.transpose(-1, -2) + t.unsqueeze(-2)


def _backproject_pixels(rowcol: torch.Tensor, z: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera points of continuous (row, col) positions ``rowcol`` [..., N, 2] at depth ``z`` [..., N].

    ``K`` [..., 3, 3] broadcasts against the leading dims. Returns [..., N, 3].
    """
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]  # [..., 1]
    cx, cy, skew = K[..., 0, 2, None], K[..., 1, 2, None], K[..., 0, 1, None]
    y_over_z = (rowcol[..., 0] - cy) / fy
    x_over_z = (rowcol[..., 1] - cx - skew * y_over_z) / fx
    return torch.stack((x_over_z * z, y_over_z * z, z), dim=-1)


def _pixel_grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(row, col) of every pixel in row-major order: [h*w, 2]."""
    rows = torch.arange(h, dtype=dtype, device=device).repeat_interleave(w)
    cols = torch.arange(w, dtype=dtype, device=device).repeat(h)
    return torch.stack((rows, cols), dim=-1)


def backproject_depth(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-space point of every pixel of a depth map.

    Args:
        depth: [..., H, W] metres.
        K: [..., 3, 3] (or 4×4) intrinsics at H×W, broadcasting against depth's leading dims.
    Returns:
        [..., H, W, 3] points (x, y, z) with z = depth. Invalid pixels are not removed: a 0 depth
        gives the camera centre (0, 0, 0), a NaN depth gives NaN; mask with ``valid_depth(depth)``.
    """
    K = _intrinsics3x3(K)
    dtype = _float_dtype(depth, K)
    h, w = depth.shape[-2:]
    grid = _pixel_grid(h, w, dtype, depth.device)  # [H*W, 2]
    z = depth.to(dtype).flatten(-2)  # [..., H*W]
    points = _backproject_pixels(grid, z, K.to(dtype))  # [..., H*W, 3]
    return points.unflatten(-2, (h, w))


def depth_to_world(
    depth: torch.Tensor, K: torch.Tensor, camera_to_world: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space point of every pixel, with its validity.

    Args:
        depth: [..., H, W] metres; K: [..., 3, 3]; camera_to_world: [..., 4, 4].
    Returns:
        points [..., H, W, 3] (invalid pixels hold the camera centre or NaN, see
        ``backproject_depth``) and valid [..., H, W] bool.
    """
    camera_points = backproject_depth(depth, K)  # [..., H, W, 3]
    h, w = camera_points.shape[-3:-1]
    world = transform_points(camera_to_world.to(camera_points.dtype), camera_points.flatten(-3, -2))
    return world.unflatten(-2, (h, w)), valid_depth(depth)


def project_points(K: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project camera-space points to continuous pixel positions.

    Args:
        K: [..., 3, 3] (or 4×4); points: [..., N, 3] in the camera frame.
    Returns:
        rowcol [..., N, 2] float (row = v, col = u) and z [..., N]. Positions of points with
        z <= 0 are meaningless (inf/NaN or mirrored); callers must mask them with ``z > 0``.
    """
    K = _intrinsics3x3(K).to(points.dtype)
    z = points[..., 2]
    x_over_z = points[..., 0] / z
    y_over_z = points[..., 1] / z
    u = K[..., 0, 0, None] * x_over_z + K[..., 0, 1, None] * y_over_z + K[..., 0, 2, None]
    v = K[..., 1, 1, None] * y_over_z + K[..., 1, 2, None]
    return torch.stack((v, u), dim=-1), z


def points_in_frustum(
    points: torch.Tensor,
    K: torch.Tensor,
    world_to_camera: torch.Tensor,
    image_hw: tuple[int, int],
    margin: float = 0.0,
) -> torch.Tensor:
    """Which world points lie in a camera's view frustum, widened sideways by ``margin`` metres.

    A point is inside when z > 0 and it projects onto the H×W image, i.e. its nearest pixel
    ``floor(x + 0.5)`` is a pixel of the image (the test `voxel_pixel_correspondences` applies, so
    with margin 0 the two agree exactly). ``margin`` moves the four side planes out by that many
    metres along the camera's x and y axes: a point at depth z may project up to
    f·margin / z pixels outside the image. There is no far plane.

    Args:
        points: [N, 3] world; K: [3, 3] (or 4×4) at ``image_hw`` = (H, W); world_to_camera: [4, 4].
    Returns:
        [N] bool.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0 metres, got {margin}")
    K = _intrinsics3x3(K)
    dtype = _float_dtype(points, K, world_to_camera)
    rowcol, z = project_points(K.to(dtype), transform_points(world_to_camera.to(dtype), points.to(dtype)))
    focal = torch.stack((K[1, 1], K[0, 0])).to(dtype)  # (fy, fx): pixels per metre at z = 1, per (row, col)
    slack = margin * focal / z[:, None]  # [N, 2] pixels
    size = torch.tensor(image_hw, dtype=dtype, device=points.device)
    shifted = rowcol + 0.5  # floor(shifted) is the nearest pixel
    inside = ((shifted + slack >= 0) & (shifted - slack < size)).all(-1)
    return (z > 0) & inside


def _offset_tensor(offset: Offset, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (row, col) offset as [B or 1, 1, 2]."""
    off = torch.as_tensor(offset, dtype=dtype, device=device)
    if off.shape[-1:] != (2,) or off.dim() > 2:
        raise ValueError(f"offset must be (row, col) or [B, 2], got shape {tuple(off.shape)}")
    return off.reshape(-1, 1, 2)


def _dense_matches(
    depth1: torch.Tensor,
    K1: torch.Tensor,
    world_to_camera1: torch.Tensor,
    depth2: torch.Tensor,
    K2: torch.Tensor,
    world_to_camera2: torch.Tensor,
    threshold: float,
    offset1: Offset,
    offset2: Offset,
    pixel_center: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match of every pixel of view 1 for B pairs at once (the one implementation of the test).

    depth1 [B, H1, W1], depth2 [B, H2, W2], K* [B, 3, 3], world_to_camera* [B, 4, 4].
    Returns pos2 [B, H1*W1, 2] int64 (row, col) in view 2 (0 where unmatched) and
    matched [B, H1*W1] bool; pixel n of view 1 is (n // W1, n % W1).
    """
    K1, K2 = _intrinsics3x3(K1), _intrinsics3x3(K2)
    dtype = _float_dtype(depth1, K1, world_to_camera1, depth2, K2, world_to_camera2)
    device = depth1.device
    b, h1, w1 = depth1.shape
    h2, w2 = depth2.shape[-2:]

    z1 = depth1.to(dtype).reshape(b, h1 * w1)  # [B, N]
    valid1 = valid_depth(z1)
    rowcol1 = _pixel_grid(h1, w1, dtype, device) + _offset_tensor(offset1, dtype, device) + pixel_center
    points1 = _backproject_pixels(rowcol1, z1, K1.to(dtype))  # [B, N, 3] camera 1

    camera1_to_camera2 = world_to_camera2.to(dtype) @ invert_rigid(world_to_camera1.to(dtype))  # [B, 4, 4]
    points2 = transform_points(camera1_to_camera2, points1)  # [B, N, 3] camera 2
    rowcol2, z2 = project_points(K2.to(dtype), points2)  # [B, N, 2], [B, N]

    # Nearest pixel, decided on floats so that inf/NaN/huge positions never reach the int cast.
    index2 = torch.floor(rowcol2 - _offset_tensor(offset2, dtype, device) - pixel_center + 0.5)
    inside = (
        (z2 > 0)
        & (index2[..., 0] >= 0)
        & (index2[..., 0] < h2)
        & (index2[..., 1] >= 0)
        & (index2[..., 1] < w2)
    )
    index2 = torch.where(inside.unsqueeze(-1), index2, 0).long()  # [B, N, 2]
    flat2 = index2[..., 0] * w2 + index2[..., 1]  # [B, N]
    d2 = depth2.to(dtype).reshape(b, h2 * w2).gather(1, flat2)  # [B, N] depth of view 2 there
    matched = valid1 & inside & valid_depth(d2) & ((z2 - d2).abs() < threshold)
    return index2 * matched.unsqueeze(-1), matched


def pixel_correspondences(
    depth1: torch.Tensor,
    K1: torch.Tensor,
    world_to_camera1: torch.Tensor,
    depth2: torch.Tensor,
    K2: torch.Tensor,
    world_to_camera2: torch.Tensor,
    threshold: float = 0.05,
    *,
    offset1: Offset = (0.0, 0.0),
    offset2: Offset = (0.0, 0.0),
    pixel_center: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All depth-consistent pixel matches from view 1 to view 2 (the original's ``warp``).

    Every valid pixel of view 1 is back-projected with its depth, moved to camera 2 by
    ``world_to_camera2 @ inverse(world_to_camera1)`` and projected with K2. It matches when the
    point is in front of camera 2 (z > 0), its nearest pixel lies inside view 2, view 2's depth
    there is valid, and |z - depth2| < ``threshold`` (metres; a visibility/occlusion test).

    Crops: ``offset*`` is the (row, col) of the crop's top-left pixel in the full image that K
    describes, so crop index i sits at continuous full-image coordinate i + offset + pixel_center,
    and view 2's index is floor(coord - offset2 - pixel_center + 0.5). ``pixel_center = 0.0`` is
    this module's convention (ScanNet; the original's bbox = (-0.5, -0.5)); ``0.5`` is COLMAP's
    (pixel centres at +0.5), which MegaDepth intrinsics need.

    Differences from the original ``warp``: invalid depth is 0 / non-finite (it filtered -1,
    which ScanNet and MegaDepth never use); positions round to the nearest pixel (it truncated
    toward zero, mapping an identical view's pixel c to c - 1 whenever float error gave
    c - 1e-6, and letting (-1, 0) pass as 0); points behind camera 2 are rejected; view 2 may
    have a different size from view 1; no match returns empty tensors instead of raising.

    Args:
        depth1: [H1, W1], depth2: [H2, W2] metres. K1, K2: [3, 3] (or 4×4) at those sizes.
        world_to_camera1, world_to_camera2: [4, 4] rigid.
    Returns:
        pos1 [M, 2], pos2 [M, 2] int64 (row, col) pixel indices, pos1 in row-major order.
    """
    if depth1.dim() != 2 or depth2.dim() != 2:
        raise ValueError(
            f"depth maps must be [H, W], got {tuple(depth1.shape)} and {tuple(depth2.shape)}; "
            "use sample_pixel_correspondences for batches"
        )
    pos2, matched = _dense_matches(
        depth1.unsqueeze(0),
        K1.unsqueeze(0),
        world_to_camera1.unsqueeze(0),
        depth2.unsqueeze(0),
        K2.unsqueeze(0),
        world_to_camera2.unsqueeze(0),
        threshold,
        offset1,
        offset2,
        pixel_center,
    )
    index1 = matched[0].nonzero().squeeze(-1)  # [M]
    w1 = depth1.shape[-1]
    pos1 = torch.stack((index1 // w1, index1 % w1), dim=-1)  # [M, 2]
    return pos1, pos2[0, index1]


def sample_pixel_correspondences(
    depth1: torch.Tensor,
    K1: torch.Tensor,
    world_to_camera1: torch.Tensor,
    depth2: torch.Tensor,
    K2: torch.Tensor,
    world_to_camera2: torch.Tensor,
    num_samples: int,
    threshold: float = 0.05,
    generator: torch.Generator | None = None,
    *,
    offset1: Offset = (0.0, 0.0),
    offset2: Offset = (0.0, 0.0),
    pixel_center: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_samples`` matches per pair for a batch of B pairs, padded with a validity mask.

    The match set of each pair is exactly ``pixel_correspondences`` (same arguments; offsets may
    also be [B, 2] tensors). A pair with at least S matches gets S distinct ones in random
    order; a pair with 1..S-1 matches gets S draws with replacement (as the original's
    ``np.random.choice``); a pair with none gets valid = False and positions 0.

    Args:
        depth1: [B, H1, W1], depth2: [B, H2, W2]; K1, K2: [B, 3, 3];
        world_to_camera1, world_to_camera2: [B, 4, 4].
        num_samples: S.
        generator: source of randomness (any device; numbers are moved to the inputs' device).
    Returns:
        pos1 [B, S, 2], pos2 [B, S, 2] int64 (row, col) and valid [B, S] bool.
    """
    if depth1.dim() != 3 or depth2.dim() != 3 or depth1.shape[0] != depth2.shape[0]:
        raise ValueError(
            f"depth maps must be [B, H, W] with the same B, got {tuple(depth1.shape)} "
            f"and {tuple(depth2.shape)}"
        )
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    pos2_all, matched = _dense_matches(
        depth1,
        K1,
        world_to_camera1,
        depth2,
        K2,
        world_to_camera2,
        threshold,
        offset1,
        offset2,
        pixel_center,
    )  # [B, N, 2], [B, N]
    device = depth1.device
    b, n = matched.shape
    w1 = depth1.shape[-1]
    s = num_samples
    k = min(s, n)
    if k == 0:
        zeros = torch.zeros(b, s, 2, dtype=torch.long, device=device)
        return zeros, zeros.clone(), torch.zeros(b, s, dtype=torch.bool, device=device)

    rand_device = generator.device if generator is not None else device
    # Random scores with -inf on unmatched pixels: the top k are a uniformly random subset of
    # the matches, in random order, followed by unmatched pixels when a pair has fewer than k.
    scores = torch.rand(b, n, generator=generator, device=rand_device).to(device)
    scores = scores.masked_fill(~matched, float("-inf"))
    order = scores.topk(k, dim=1).indices  # [B, k]

    count = matched.sum(dim=1, keepdim=True)  # [B, 1]
    draws = torch.rand(b, s, generator=generator, device=rand_device).to(device)
    with_replacement = (draws * count).long().clamp(max=(count - 1).clamp(min=0))  # [B, S]
    slots = torch.arange(s, device=device).expand(b, s)
    slot = torch.where(count >= s, slots, with_replacement).clamp(max=k - 1)  # [B, S]
    valid = (count > 0).expand(b, s)

    index1 = order.gather(1, slot) * valid  # [B, S] flat pixel index in view 1
    pos1 = torch.stack((index1 // w1, index1 % w1), dim=-1) * valid.unsqueeze(-1)
    pos2 = pos2_all.gather(1, index1.unsqueeze(-1).expand(b, s, 2)) * valid.unsqueeze(-1)
    return pos1, pos2, valid


def voxelize(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Integer voxel coordinates floor(points / voxel_size). [..., 3] float -> [..., 3] int64."""
    if voxel_size <= 0:
        raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
    return torch.floor(points / voxel_size).long()


def sparse_quantize(coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deduplicate integer coordinates, keeping the first point of each voxel.

    Args:
        coords: [N, D] int64, e.g. (x, y, z) or (batch, x, y, z).
    Returns:
        unique_coords [V, D] (sorted lexicographically), representative [V] int64 index of the
        first input row in each voxel (use it to pick features), inverse [N] int64 with
        ``unique_coords[inverse] == coords``.
    """
    if coords.dim() != 2:
        raise ValueError(f"coords must be [N, D], got shape {tuple(coords.shape)}")
    n = coords.shape[0]
    if n == 0:
        return coords.clone(), coords.new_zeros(0), coords.new_zeros(0)
    # One int64 key per row, the first column most significant: sorting the keys sorts the rows
    # lexicographically, and a 1-D unique is ~20x faster than torch.unique(dim=0) on CPU.
    low = coords.min(0).values
    extent = (coords.max(0).values - low + 1).tolist()
    if math.prod(extent) >= 2**62:
        unique_coords, inverse = torch.unique(coords, dim=0, return_inverse=True)
    else:
        radix = torch.tensor([math.prod(extent[d + 1 :]) for d in range(len(extent))], device=coords.device)
        unique_keys, inverse = torch.unique(((coords - low) * radix).sum(1), return_inverse=True)
        unique_coords = unique_keys[:, None] // radix % torch.tensor(extent, device=coords.device) + low
    first = torch.full((unique_coords.shape[0],), n, dtype=torch.long, device=coords.device)
    first = first.scatter_reduce(
        0, inverse, torch.arange(n, device=coords.device), reduce="amin", include_self=True
    )
    return unique_coords, first, inverse


def voxel_pixel_correspondences(
    voxel_coords: torch.Tensor,
    voxel_size: float,
    depth: torch.Tensor,
    K: torch.Tensor,
    world_to_camera: torch.Tensor,
    visibility_threshold: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels that see each voxel (the original's ``voxel_pixel``).

    The voxel centre ((i, j, k) + 0.5)·voxel_size (the original used the corner i·s) is moved
    to the camera, dropped if z <= 0 (the original kept points behind the camera), projected,
    rounded to the nearest pixel (the original truncated), kept inside H×W, and kept where the
    depth there is valid and |z - depth| < ``visibility_threshold`` (the occlusion test, 0.2 m
    hard-coded in the original).

    Args:
        voxel_coords: [N, 3] int64 world voxel coordinates (no batch column).
        depth: [H, W] metres; K: [3, 3] (or 4×4) at H×W; world_to_camera: [4, 4].
    Returns:
        pixels [M, 2] int64 (row, col) and voxel_index [M] int64 rows of ``voxel_coords``,
        in increasing voxel order.
    """
    if voxel_coords.dim() != 2 or voxel_coords.shape[-1] != 3:
        raise ValueError(f"voxel_coords must be [N, 3], got shape {tuple(voxel_coords.shape)}")
    if depth.dim() != 2:
        raise ValueError(f"depth must be [H, W], got shape {tuple(depth.shape)}")
    K = _intrinsics3x3(K)
    dtype = _float_dtype(depth, K, world_to_camera)
    h, w = depth.shape
    centres = (voxel_coords.to(dtype) + 0.5) * voxel_size  # [N, 3] world
    camera_points = transform_points(world_to_camera.to(dtype), centres)  # [N, 3]
    rowcol, z = project_points(K.to(dtype), camera_points)  # [N, 2], [N]
    index = torch.floor(rowcol + 0.5)
    inside = (z > 0) & (index[:, 0] >= 0) & (index[:, 0] < h) & (index[:, 1] >= 0) & (index[:, 1] < w)
    voxel_index = inside.nonzero().squeeze(-1)  # [M']
    pixels = index[voxel_index].long()  # [M', 2]
    d = depth.to(dtype)[pixels[:, 0], pixels[:, 1]]
    visible = valid_depth(d) & ((z[voxel_index] - d).abs() < visibility_threshold)
    return pixels[visible], voxel_index[visible]
