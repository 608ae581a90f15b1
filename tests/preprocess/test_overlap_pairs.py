"""Frame-pair overlap: voxel downsampling, the exact fast overlap against the KD-tree definition."""

from __future__ import annotations

import numpy as np
import pytest

from pri3d.preprocess.overlap import (
    neighbour_offsets,
    overlap_matrix,
    overlap_matrix_kdtree,
    pack_voxel_keys,
    pair_scores,
    voxel_downsample,
)


def _surface_clouds(seed: int, num_frames: int, points: int = 1500) -> list[np.ndarray]:
    """Downsampled patches of two planes seen from shifted windows, like frames of a scan."""
    rng = np.random.default_rng(seed)
    clouds = []
    for _ in range(num_frames):
        start = rng.uniform(-1.0, 1.0, size=2)
        uv = start + rng.uniform(0, 1.2, size=(points, 2))  # window on the planes
        wall = np.stack([uv[:, 0], np.full(points, -0.3), uv[:, 1]], axis=1)  # y = -0.3 plane
        floor = np.stack([uv[:, 0], uv[:, 1], np.zeros(points)], axis=1)  # z = 0 plane
        cloud = np.concatenate([wall, floor]) + rng.normal(scale=0.004, size=(2 * points, 3))
        clouds.append(voxel_downsample(cloud))
    return clouds


def test_voxel_downsample_follows_open3d_grid_rule():
    points = np.array([[0.01, 0.01, 0.01], [0.03, 0.04, 0.02], [-0.01, 0.0, 0.0], [0.06, 0.0, 0.0]])
    centroids = voxel_downsample(points, 0.05)
    # grid origin = min - voxel/2 = (-0.035, -0.025, -0.025): voxels (0,0,0) <- points 0 and 2,
    # (1,1,0) <- point 1, (1,0,0) <- point 3; sorted by voxel
    expected = np.array([[0.0, 0.005, 0.005], [0.06, 0.0, 0.0], [0.03, 0.04, 0.02]])
    np.testing.assert_allclose(centroids, expected, atol=1e-15)
    assert voxel_downsample(np.zeros((0, 3))).shape == (0, 3)


def test_voxel_downsample_equals_a_per_point_dictionary_and_moves_with_the_cloud():
    rng = np.random.default_rng(7)
    points = rng.uniform(-1, 1, size=(3000, 3)) * [1, 1, 0.2]
    origin = points.min(axis=0) - 0.025
    groups: dict[tuple, list] = {}
    for point in points:
        groups.setdefault(tuple(np.floor((point - origin) / 0.05).astype(int)), []).append(point)
    expected = np.array([np.mean(groups[key], axis=0) for key in sorted(groups)])
    np.testing.assert_allclose(voxel_downsample(points), expected, atol=1e-12)
    shift = np.array([12.3, -4.56, 0.789])
    np.testing.assert_allclose(voxel_downsample(points + shift), expected + shift, atol=1e-9)


def test_voxel_downsample_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        voxel_downsample(np.array([[0.0, np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        voxel_downsample(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="beyond the packable"):
        voxel_downsample(np.array([[0.0, 0.0, 0.0], [1e5, 0.0, 0.0]]))  # a 100 km wide frame
    with pytest.raises(ValueError, match="beyond the packable"):
        overlap_matrix([np.array([[1e5, 0.0, 0.0]])])


def test_packed_keys_add_offsets_and_keep_order():
    coords = np.array([[-3, 5, 7], [0, 0, 0], [12, -40, 2]])
    offsets = np.array([[1, -2, 2], [-2, 0, 1], [0, 2, -2]])
    zero = pack_voxel_keys(np.zeros((1, 3), np.int64))[0]
    np.testing.assert_array_equal(
        pack_voxel_keys(coords) + pack_voxel_keys(offsets) - zero, pack_voxel_keys(coords + offsets)
    )
    lexicographic = np.lexsort((coords[:, 2], coords[:, 1], coords[:, 0]))
    np.testing.assert_array_equal(np.argsort(pack_voxel_keys(coords)), lexicographic)


def test_neighbour_offsets_cover_the_radius():
    assert len(neighbour_offsets(0.05, 0.075)) == 117  # 5×5×5 block without its corners
    assert len(neighbour_offsets(0.075, 0.075)) == 27
    # Brute force: any point within r of a point in cell 0 lies in a listed cell.
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 0.05, size=(20000, 3))
    direction = rng.normal(size=(20000, 3))
    b = a + direction / np.linalg.norm(direction, axis=1, keepdims=True) * rng.uniform(0, 0.0749, (20000, 1))
    cells = {tuple(c) for c in np.floor(b / 0.05).astype(int)}
    assert cells <= {tuple(o) for o in neighbour_offsets(0.05, 0.075)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_overlap_equals_kdtree_definition(seed):
    clouds = _surface_clouds(seed, num_frames=9)
    fast = overlap_matrix(clouds)
    reference = overlap_matrix_kdtree(clouds)
    np.testing.assert_allclose(fast, reference, atol=1e-12)
    assert 0 < fast[~np.eye(9, dtype=bool)].max() < 1  # partial overlaps, not a trivial case


def test_fast_overlap_with_more_than_64_frames_and_empty_ones():
    clouds = _surface_clouds(3, num_frames=70, points=200)
    clouds[5] = np.zeros((0, 3))
    clouds[66] = np.zeros((0, 3))
    fast = overlap_matrix(clouds)
    np.testing.assert_allclose(fast, overlap_matrix_kdtree(clouds), atol=1e-12)
    assert fast[:, 5].sum() == 1.0 and fast[5, 5] == 1.0  # an empty frame overlaps nothing


def test_fast_overlap_on_raw_points_and_other_radius():
    """Not limited to downsampled clouds: several points of a frame may share a cell."""
    rng = np.random.default_rng(4)
    clouds = [rng.uniform(-0.3, 0.3, size=(300, 3)) + rng.uniform(-0.2, 0.2, 3) for _ in range(6)]
    for radius in (0.02, 0.075, 0.2):
        np.testing.assert_allclose(
            overlap_matrix(clouds, radius=radius), overlap_matrix_kdtree(clouds, radius=radius), atol=1e-12
        )


def test_identical_frames_overlap_fully_and_distant_ones_not_at_all():
    cloud = _surface_clouds(5, num_frames=1)[0]
    far = cloud + np.array([10.0, 0.0, 0.0])
    m = overlap_matrix([cloud, cloud.copy(), far])
    np.testing.assert_array_equal(m, [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    assert overlap_matrix([]).shape == (0, 0)
    np.testing.assert_array_equal(overlap_matrix([cloud]), [[1.0]])


def test_match_needs_distance_below_the_radius():
    a = np.array([[0.0, 0.0, 0.0]])
    near = np.array([[0.0749, 0.0, 0.0]])
    beyond = np.array([[0.0751, 0.0, 0.0]])
    assert overlap_matrix([a, near])[0, 1] == 1.0
    assert overlap_matrix([a, beyond])[0, 1] == 0.0


def test_pair_scores_are_symmetric_maxima_in_unit_interval():
    clouds = _surface_clouds(6, num_frames=7)
    m = overlap_matrix(clouds)
    first, second, scores = pair_scores(m)
    assert len(scores) == 7 * 6 // 2 and (first < second).all()
    np.testing.assert_array_equal(scores, np.maximum(m[first, second], m[second, first]))
    assert ((scores >= 0) & (scores <= 1)).all()
    flipped = pair_scores(m.T)[2]  # swapping the roles of i and j gives the same scores
    np.testing.assert_array_equal(scores, flipped)


def test_bad_clouds_are_named():
    with pytest.raises(ValueError, match="cloud 1 contains NaN"):
        overlap_matrix([np.zeros((2, 3)), np.full((2, 3), np.nan)])
    with pytest.raises(ValueError, match=r"cloud 0 must be \[P, 3\]"):
        overlap_matrix([np.zeros((2, 2))])


@pytest.mark.parametrize("cell_size", [0.01, 0.03, 0.075, 0.2])
def test_cell_size_changes_speed_not_the_answer(cell_size):
    clouds = _surface_clouds(8, num_frames=5, points=800)
    np.testing.assert_allclose(
        overlap_matrix(clouds, cell_size=cell_size), overlap_matrix_kdtree(clouds), atol=1e-12
    )
    with pytest.raises(ValueError, match="cell_size must be at least"):
        overlap_matrix(clouds, radius=0.075, cell_size=0.005)
