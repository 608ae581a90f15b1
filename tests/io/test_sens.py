"""ScanNet .sens reader/writer: round trips, frame selection, streaming, and corrupt files."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pri3d.io.atomic import is_temporary
from pri3d.io.sens import (
    FRAME_HEADER_BYTES,
    SensFormatError,
    SensFrame,
    SensHeader,
    SensReader,
    SensWriter,
)

NUM_FRAMES = 5
COLOR_H, COLOR_W = 30, 40
DEPTH_H, DEPTH_W = 60, 80
INVALID_FRAME = 3
SENSOR_NAME = "StructureSensor"
K_COLOR = np.array([[35.0, 0, 19.5, 0], [0, 35.0, 14.5, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
K_DEPTH = np.array([[70.0, 0, 39.5], [0, 70.0, 29.5], [0, 0, 1]], np.float32)  # [3, 3] on purpose
EXTRINSIC_DEPTH = np.array([[1, 0, 0, 0.025], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)


def _frame_data(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pose [4, 4], smooth RGB [COLOR_H, COLOR_W, 3] (JPEG-friendly), random depth [DEPTH_H, DEPTH_W]."""
    rng = np.random.default_rng(index)
    pose = np.eye(4, dtype=np.float32)
    pose[:3, 3] = rng.normal(size=3)
    if index == INVALID_FRAME:
        pose[:] = -np.inf
    rows, cols = np.mgrid[0:COLOR_H, 0:COLOR_W]
    color = np.stack([rows * 6 + index * 10, cols * 5, 128 + 0 * rows], axis=-1).astype(np.uint8)
    depth = rng.integers(0, 65536, size=(DEPTH_H, DEPTH_W), dtype=np.uint16)
    depth[0, :3] = [0, 1, 65535]
    return pose, color, depth


def _writer(path: Path) -> SensWriter:
    return SensWriter(
        path,
        sensor_name=SENSOR_NAME,
        intrinsic_color=K_COLOR,
        intrinsic_depth=K_DEPTH,
        extrinsic_depth=EXTRINSIC_DEPTH,
        color_width=COLOR_W,
        color_height=COLOR_H,
        depth_width=DEPTH_W,
        depth_height=DEPTH_H,
    )


def _write_sens(path: Path, num_frames: int = NUM_FRAMES) -> None:
    with _writer(path) as writer:
        for index in range(num_frames):
            pose, color, depth = _frame_data(index)
            writer.write_frame(
                pose, color, depth, timestamp_color=1000 * index, timestamp_depth=1000 * index + 7
            )


@pytest.fixture
def sens_path(tmp_path: Path) -> Path:
    path = tmp_path / "scene0000_00.sens"
    _write_sens(path)
    return path


def _frame_offsets(path: Path) -> list[int]:
    """Byte offsets of each frame, found by walking the layout independently of the reader."""
    data = path.read_bytes()
    name_length = struct.unpack_from("<Q", data, 4)[0]
    offset = 12 + name_length + 256 + 36
    num_frames = struct.unpack_from("<Q", data, offset - 8)[0]
    offsets = []
    for _ in range(num_frames):
        offsets.append(offset)
        color_size, depth_size = struct.unpack_from("<QQ", data, offset + 64 + 16)
        offset += FRAME_HEADER_BYTES + color_size + depth_size
    return offsets


def test_round_trip_header_and_frames(sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        header = reader.header
        assert len(reader) == NUM_FRAMES
        assert header.version == 4
        assert header.sensor_name == SENSOR_NAME
        assert header.color_compression == "jpeg"
        assert header.depth_compression == "zlib_ushort"
        assert (header.color_width, header.color_height) == (COLOR_W, COLOR_H)
        assert (header.depth_width, header.depth_height) == (DEPTH_W, DEPTH_H)
        assert header.depth_shift == 1000.0
        np.testing.assert_array_equal(header.intrinsic_color, K_COLOR)
        np.testing.assert_array_equal(header.intrinsic_depth[:3, :3], K_DEPTH)
        np.testing.assert_array_equal(header.intrinsic_depth[3], [0, 0, 0, 1])
        np.testing.assert_array_equal(header.extrinsic_color, np.eye(4))
        np.testing.assert_array_equal(header.extrinsic_depth, EXTRINSIC_DEPTH)
        assert header.intrinsic_color.dtype == np.float32

        frames = list(reader.frames())
    assert [frame.index for frame in frames] == list(range(NUM_FRAMES))
    for frame in frames:
        pose, color, depth = _frame_data(frame.index)
        np.testing.assert_array_equal(frame.camera_to_world, pose)
        assert frame.camera_to_world.dtype == np.float32
        assert (frame.timestamp_color, frame.timestamp_depth) == (1000 * frame.index, 1000 * frame.index + 7)
        decoded_depth = frame.decode_depth()
        assert decoded_depth.dtype == np.uint16
        np.testing.assert_array_equal(decoded_depth, depth)
        decoded_color = frame.decode_color()
        assert decoded_color.dtype == np.uint8 and decoded_color.shape == (COLOR_H, COLOR_W, 3)
        assert np.abs(decoded_color.astype(int) - color.astype(int)).mean() < 3.0


def test_invalid_pose_is_flagged_not_raised(sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        valid = {frame.index: frame.pose_valid for frame in reader.frames()}
    assert valid == {index: index != INVALID_FRAME for index in range(NUM_FRAMES)}


@pytest.mark.parametrize(
    ("step", "start", "expected"),
    [(2, 0, [0, 2, 4]), (3, 1, [1, 4]), (1, 4, [4]), (10, 0, [0]), (1, 5, []), (2, 7, [])],
)
def test_frame_selection(sens_path: Path, step: int, start: int, expected: list[int]) -> None:
    with SensReader(sens_path) as reader:
        assert [frame.index for frame in reader.frames(step=step, start=start)] == expected


def test_frame_selection_rejects_bad_arguments(sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        with pytest.raises(ValueError, match="step"):
            next(reader.frames(step=0))
        with pytest.raises(ValueError, match="start"):
            next(reader.frames(start=-1))


class _CountingFile:
    """Wraps a binary file and records the size of every read()."""

    def __init__(self, file) -> None:
        self.file = file
        self.reads: list[int] = []

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.reads.append(len(data))
        return data

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def test_skipped_frames_payload_is_never_read(sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        payload = {f.index: len(f.color_bytes) + len(f.depth_bytes) for f in reader.frames()}
        counting = _CountingFile(reader._file)
        reader._file = counting
        selected = [frame.index for frame in reader.frames(step=2)]
    assert selected == [0, 2, 4]
    # Frame headers 0..4 plus the colour and depth bytes of frames 0, 2 and 4, nothing else.
    assert sum(counting.reads) == NUM_FRAMES * FRAME_HEADER_BYTES + sum(payload[i] for i in selected)
    assert all(size <= max(payload.values()) for size in counting.reads)


def test_frames_stream_lazily(sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        counting = _CountingFile(reader._file)
        reader._file = counting
        stream = reader.frames()
        assert counting.reads == []  # creating the generator reads nothing
        first = next(stream)
        assert first.index == 0
        reads_for_first = len(counting.reads)
        assert reads_for_first == 3  # frame header, colour bytes, depth bytes of frame 0 only
        assert next(stream).index == 1
        assert len(counting.reads) == 2 * reads_for_first


def test_truncated_payload_yields_complete_frames_first(sens_path: Path) -> None:
    offsets = _frame_offsets(sens_path)
    data = sens_path.read_bytes()
    sens_path.write_bytes(data[: offsets[4] + FRAME_HEADER_BYTES + 10])
    yielded = []
    with SensReader(sens_path) as reader, pytest.raises(SensFormatError, match="frame 4 of 5"):
        for frame in reader.frames():
            yielded.append(frame.index)
    assert yielded == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        ("inside_header_start", r"file ends after 7 of 12 bytes of the header"),
        ("inside_sensor_name", r"bytes of the header"),
        ("inside_frame_header", r"frame 2 of 5: file ends after 40 of 96 bytes of the frame header"),
        (
            "inside_color_bytes",
            r"frame 2 of 5: file ends after 5 of \d+ bytes of the frame's colour and depth",
        ),
        (
            "inside_depth_bytes",
            r"frame 3 of 5: file ends after \d+ of \d+ bytes of the frame's colour and depth",
        ),
    ],
)
def test_truncated_file_names_file_and_frame(sens_path: Path, cut: str, expected: str) -> None:
    offsets = _frame_offsets(sens_path)
    data = sens_path.read_bytes()
    color_size_3 = struct.unpack_from("<Q", data, offsets[3] + 64 + 16)[0]
    length = {
        "inside_header_start": 7,
        "inside_sensor_name": 12 + 4,
        "inside_frame_header": offsets[2] + 40,
        "inside_color_bytes": offsets[2] + FRAME_HEADER_BYTES + 5,
        "inside_depth_bytes": offsets[3] + FRAME_HEADER_BYTES + color_size_3 + 3,
    }[cut]
    sens_path.write_bytes(data[:length])
    with pytest.raises(SensFormatError, match=expected) as error:
        with SensReader(sens_path) as reader:
            list(reader.frames())
    assert "scene0000_00.sens" in str(error.value)


def test_truncation_found_in_skipped_frame(sens_path: Path) -> None:
    # Frame 3 is never read with step=2, yet a file cut inside it must not pass silently.
    offsets = _frame_offsets(sens_path)
    sens_path.write_bytes(sens_path.read_bytes()[: offsets[3] + FRAME_HEADER_BYTES + 5])
    with SensReader(sens_path) as reader, pytest.raises(SensFormatError, match="frame 3 of 5"):
        list(reader.frames(step=2))


def test_frame_count_beyond_file_is_rejected_at_open(sens_path: Path) -> None:
    offsets = _frame_offsets(sens_path)
    data = bytearray(sens_path.read_bytes())
    data[offsets[0] - 8 : offsets[0]] = struct.pack("<Q", 10**12)
    sens_path.write_bytes(bytes(data))
    with pytest.raises(SensFormatError, match=r"scene0000_00\.sens: header says 1000000000000 frames"):
        SensReader(sens_path)


def test_wrong_version_is_rejected(sens_path: Path) -> None:
    data = bytearray(sens_path.read_bytes())
    data[:4] = struct.pack("<I", 3)
    sens_path.write_bytes(bytes(data))
    with pytest.raises(SensFormatError, match=r"scene0000_00\.sens: header has version 3, expected 4"):
        SensReader(sens_path)


def _header_tail_offset(path: Path) -> int:
    name_length = struct.unpack_from("<Q", path.read_bytes(), 4)[0]
    return 12 + name_length + 256


@pytest.mark.parametrize(
    ("field_offset", "fmt", "value", "expected"),
    [
        (0, "<i", 7, "colour compression code 7"),
        (4, "<i", -5, "depth compression code -5"),
        (8, "<I", 0, "color_width = 0"),
        (20, "<I", 100_000, "depth_height = 100000"),
        (24, "<f", 0.0, "depth_shift = 0.0"),
    ],
)
def test_corrupt_header_fields_are_rejected(
    sens_path: Path, field_offset: int, fmt: str, value: float, expected: str
) -> None:
    data = bytearray(sens_path.read_bytes())
    struct.pack_into(fmt, data, _header_tail_offset(sens_path) + field_offset, value)
    sens_path.write_bytes(bytes(data))
    with pytest.raises(SensFormatError, match=expected):
        SensReader(sens_path)


def test_unsupported_compression_fails_at_decode(sens_path: Path) -> None:
    data = bytearray(sens_path.read_bytes())
    tail = _header_tail_offset(sens_path)
    struct.pack_into("<ii", data, tail, -1, 2)  # colour 'unknown', depth 'occi_ushort'
    sens_path.write_bytes(bytes(data))
    with SensReader(sens_path) as reader:
        assert (reader.header.color_compression, reader.header.depth_compression) == (
            "unknown",
            "occi_ushort",
        )
        frame = next(reader.frames(start=1))
    with pytest.raises(
        SensFormatError, match=r"scene0000_00\.sens: frame 1: depth compression 'occi_ushort'"
    ):
        frame.decode_depth()
    with pytest.raises(SensFormatError, match=r"scene0000_00\.sens: frame 1: colour compression 'unknown'"):
        frame.decode_color()


def _raw_frame(color_bytes: bytes, depth_bytes: bytes, depth_compression: str = "raw_ushort") -> SensFrame:
    header = SensHeader(
        version=4,
        sensor_name="raw",
        intrinsic_color=np.eye(4, dtype=np.float32),
        extrinsic_color=np.eye(4, dtype=np.float32),
        intrinsic_depth=np.eye(4, dtype=np.float32),
        extrinsic_depth=np.eye(4, dtype=np.float32),
        color_compression="raw",
        depth_compression=depth_compression,
        color_width=4,
        color_height=2,
        depth_width=3,
        depth_height=2,
        depth_shift=1000.0,
        num_frames=1,
    )
    return SensFrame(7, np.eye(4, dtype=np.float32), 0, 0, color_bytes, depth_bytes, header, Path("raw.sens"))


def test_raw_compressions_decode() -> None:
    color = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    depth = np.array([[0, 1, 2], [65535, 1000, 7]], np.uint16)
    frame = _raw_frame(color.tobytes(), depth.astype("<u2").tobytes())
    np.testing.assert_array_equal(frame.decode_color(), color)
    np.testing.assert_array_equal(frame.decode_depth(), depth)


def test_decoded_size_mismatch_is_an_error() -> None:
    with pytest.raises(
        SensFormatError, match=r"raw\.sens: frame 7: raw colour has 5 bytes, expected 2x4x3 = 24"
    ):
        _raw_frame(b"12345", b"").decode_color()
    with pytest.raises(SensFormatError, match=r"frame 7: depth decodes to 10 bytes, expected 2x3x2 = 12"):
        _raw_frame(b"", b"0123456789").decode_depth()
    with pytest.raises(SensFormatError, match=r"frame 7: depth inflates to more than 2x3x2 = 12 bytes"):
        _raw_frame(b"", zlib.compress(bytes(100)), "zlib_ushort").decode_depth()
    with pytest.raises(SensFormatError, match=r"frame 7: depth decodes to 4 bytes"):
        _raw_frame(b"", zlib.compress(bytes(4)), "zlib_ushort").decode_depth()
    with pytest.raises(SensFormatError, match=r"frame 7: cannot inflate zlib depth"):
        _raw_frame(b"", b"not zlib at all", "zlib_ushort").decode_depth()
    with pytest.raises(SensFormatError, match=r"frame 7: zlib depth stream is truncated"):
        _raw_frame(b"", zlib.compress(bytes(12))[:-3], "zlib_ushort").decode_depth()


def test_corrupt_jpeg_is_a_format_error(sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        frame = next(reader.frames())
    frame.color_bytes = frame.color_bytes[:20]
    with pytest.raises(SensFormatError, match=r"scene0000_00\.sens: frame 0: cannot decode jpeg colour"):
        frame.decode_color()


def test_writer_exception_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "partial.sens"
    with pytest.raises(RuntimeError, match="boom"):
        with _writer(path) as writer:
            pose, color, depth = _frame_data(0)
            writer.write_frame(pose, color, depth)
            assert [is_temporary(p) for p in tmp_path.iterdir()] == [True]  # only the temporary file
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_patches_frame_count_and_accepts_encoded_jpeg(tmp_path: Path, sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        source = list(reader.frames())
    path = tmp_path / "copy.sens"
    with _writer(path) as writer:
        for frame in source[:2]:
            writer.write_frame(frame.camera_to_world, frame.color_bytes, frame.decode_depth())
        assert writer.num_frames == 2
    with SensReader(path) as reader:
        assert len(reader) == 2
        copied = list(reader.frames())
    assert [frame.color_bytes for frame in copied] == [frame.color_bytes for frame in source[:2]]


def test_empty_stream_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.sens"
    _write_sens(path, num_frames=0)
    with SensReader(path) as reader:
        assert len(reader) == 0
        assert list(reader.frames()) == []


@pytest.mark.parametrize(
    ("pose", "color", "depth", "expected"),
    [
        (np.eye(3), None, None, r"camera_to_world must be a numeric \[4, 4\]"),
        (None, np.zeros((COLOR_H, COLOR_W), np.uint8), None, r"colour must be uint8 \[30, 40, 3\] RGB"),
        (None, np.zeros((COLOR_H, COLOR_W, 3), np.float32), None, r"colour must be uint8"),
        (None, b"\x89PNG not a jpeg", None, r"colour bytes are not a JPEG"),
        (None, None, np.zeros((DEPTH_H, DEPTH_W), np.int32), r"depth must be uint16 \[60, 80\], got int32"),
        (None, None, np.zeros((DEPTH_W, DEPTH_H), np.uint16), r"depth must be uint16 \[60, 80\]"),
    ],
)
def test_writer_validates_inputs(tmp_path: Path, pose, color, depth, expected: str) -> None:
    good_pose, good_color, good_depth = _frame_data(0)
    path = tmp_path / "bad.sens"
    with pytest.raises(ValueError, match=expected) as error:
        with _writer(path) as writer:
            writer.write_frame(
                good_pose if pose is None else pose,
                good_color if color is None else color,
                good_depth if depth is None else depth,
            )
    assert "bad.sens: frame 0" in str(error.value)
    assert not path.exists()


def test_writer_rejects_jpeg_of_wrong_size(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="JPEG")
    with pytest.raises(ValueError, match=r"colour JPEG is 8x8, expected 40x30"):
        with _writer(tmp_path / "x.sens") as writer:
            writer.write_frame(np.eye(4), buffer.getvalue(), _frame_data(0)[2])


def test_frames_pickle_for_worker_decoding(sens_path: Path) -> None:
    with SensReader(sens_path) as reader:
        frame = next(reader.frames(start=2))
    copy = pickle.loads(pickle.dumps(frame))
    assert copy.index == 2 and copy.path == sens_path
    np.testing.assert_array_equal(copy.decode_depth(), _frame_data(2)[2])
