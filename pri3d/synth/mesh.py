"""Dense triangle mesh of a box scene, like a ScanNet reconstruction.

Every visible box face is tessellated on a regular grid (about `spacing` apart, 2 cm by default,
the voxel size of the geometric prior), vertex colours come from the same appearance function as the
rendered frames, and faces are cut into patches that play the role of ScanNet's over-segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pri3d.synth.appearance import surface_color
from pri3d.synth.scene import NUM_FACES, Scene, face_tangent_axes, rotate_z


@dataclass
class SceneMesh:
    vertices: np.ndarray  # [N, 3] float32 world
    colors: np.ndarray  # [N, 3] uint8
    faces: np.ndarray  # [F, 3] int32 vertex indices
    segments: np.ndarray  # [N] int64 over-segmentation id
    segment_object: np.ndarray  # [S] object id of each segment (segments never span objects)


def tessellate(scene: Scene, spacing: float = 0.02, patch: float = 0.5) -> SceneMesh:
    """Tessellate all faces flagged in `scene.mesh_faces`."""
    local_pts, parts, faces_of_pts, tris, seg_keys = [], [], [], [], []
    offset = 0
    for p in range(scene.num_parts):
        half = scene.halves[p]
        for face in range(NUM_FACES):
            if not scene.mesh_faces[p, face]:
                continue
            axis = face // 2
            (a, b) = face_tangent_axes(face)
            (lo_a, hi_a), (lo_b, hi_b) = scene.mesh_bounds[p, face]
            na = max(int(np.ceil((hi_a - lo_a) / spacing)) + 1, 2)
            nb = max(int(np.ceil((hi_b - lo_b) / spacing)) + 1, 2)
            ga, gb = np.meshgrid(np.linspace(lo_a, hi_a, na), np.linspace(lo_b, hi_b, nb), indexing="ij")
            pts = np.zeros((na * nb, 3))
            pts[:, axis] = half[axis] if face % 2 else -half[axis]
            pts[:, a] = ga.ravel()
            pts[:, b] = gb.ravel()
            local_pts.append(pts)
            parts.append(np.full(na * nb, p))
            faces_of_pts.append(np.full(na * nb, face))
            ia, ib = np.meshgrid(np.arange(na - 1), np.arange(nb - 1), indexing="ij")
            v00 = (ia * nb + ib).ravel()
            v10, v01, v11 = v00 + nb, v00 + 1, v00 + nb + 1
            quad = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
            if face % 2 == 0:  # keep triangles wound counter-clockwise seen from outside
                quad = quad[:, ::-1]
            tris.append(quad + offset)
            pa = np.floor((ga.ravel() - lo_a) / patch).astype(np.int64)
            pb = np.floor((gb.ravel() - lo_b) / patch).astype(np.int64)
            seg_keys.append(np.stack([np.full(na * nb, p), np.full(na * nb, face), pa, pb], 1))
            offset += na * nb
    local = np.concatenate(local_pts)
    part = np.concatenate(parts)
    face_idx = np.concatenate(faces_of_pts)
    rgb = surface_color(scene, part, face_idx, local)
    world = scene.centers[part] + rotate_z(local, scene.yaws[part])
    keys = np.concatenate(seg_keys)
    _, first, segments = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return SceneMesh(
        vertices=world.astype(np.float32),
        colors=np.round(rgb * 255).astype(np.uint8),
        faces=np.concatenate(tris).astype(np.int32),
        segments=segments.reshape(-1).astype(np.int64),
        segment_object=scene.object_ids[part[first]],
    )
