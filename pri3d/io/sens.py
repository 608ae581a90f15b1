"""ScanNet ``.sens`` RGB-D streams: a streaming reader and a writer.

Binary layout, little-endian (ScanNet's `SensorData.h`, version 4)::

    header  uint32 version (= 4) | uint64 n | n bytes sensor name
            4 x float32[16] intrinsic_color, extrinsic_color, intrinsic_depth, extrinsic_depth (row-major 4x4)
            int32 colour compression | int32 depth compression
            uint32 color_width, color_height, depth_width, depth_height | float32 depth_shift
            uint64 num_frames
    frame   float32[16] camera_to_world | uint64 timestamp_color, timestamp_depth,
            color_size_bytes, depth_size_bytes | colour bytes | depth bytes
    (IMU records may follow the last frame; they are ignored.)

Conventions: poses are camera-to-world, and ScanNet writes -inf entries for frames whose tracking
failed (see :attr:`SensFrame.pose_valid`). Depth is uint16 in units of ``1 / depth_shift`` metres
(``depth_shift = 1000`` gives millimetres) and 0 means "no measurement".

The reader never holds more than one frame: frames are streamed with bulk reads and the payload of
frames skipped by ``step`` is passed over with ``seek``. Decoding is left to :class:`SensFrame` so
that callers can decode in worker processes.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from pri3d.io.atomic import atomic_write

SENS_VERSION = 4

COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_COLOR_CODE = {name: code for code, name in COLOR_COMPRESSION.items()}
_DEPTH_CODE = {name: code for code, name in DEPTH_COMPRESSION.items()}

_HEADER_START = struct.Struct("<IQ")  # version, sensor-name length
_MATRICES_BYTES = 4 * 16 * 4  # four float32 4x4 matrices
# colour/depth compression, colour w/h, depth w/h, depth_shift, num_frames
_HEADER_END = struct.Struct("<iiIIIIfQ")
_FRAME_POSE_BYTES = 16 * 4
_FRAME_SCALARS = struct.Struct("<QQQQ")  # timestamp_color, timestamp_depth, color_size, depth_size
FRAME_HEADER_BYTES = _FRAME_POSE_BYTES + _FRAME_SCALARS.size  # 96

# Real sensor names are a few dozen bytes and images at most a few thousand pixels wide; anything far
# beyond that means the bytes are not a .sens header, and we say so instead of allocating gigabytes.
_MAX_SENSOR_NAME_BYTES = 4096
_MAX_IMAGE_SIDE = 16384


class SensFormatError(ValueError):
    """A ``.sens`` file (or a frame in it) does not match the format; the message names the file."""


@dataclass(eq=False)
class SensHeader:
    """Scene-level metadata of a ``.sens`` file.

    Matrices are np.float32 [4, 4]: intrinsics in pixels, extrinsics sensor-to-device.
    ``color_compression`` is one of 'unknown', 'raw', 'png', 'jpeg'; ``depth_compression`` one of
    'unknown', 'raw_ushort', 'zlib_ushort', 'occi_ushort'. Compared by identity (it holds arrays).
    """

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    num_frames: int


@dataclass(eq=False)
class SensFrame:
    """One frame as stored: pose, timestamps and still-encoded colour and depth bytes.

    ``camera_to_world`` is np.float32 [4, 4]; it holds -inf where ScanNet lost tracking.
    ``header`` gives the image sizes and compressions, ``path`` the file it came from (for errors).
    Frames are plain picklable data, so decoding can be farmed out to worker processes.
    """

    index: int
    camera_to_world: np.ndarray
    timestamp_color: int
    timestamp_depth: int
    color_bytes: bytes = field(repr=False)
    depth_bytes: bytes = field(repr=False)
    header: SensHeader = field(repr=False)
    path: Path = field(repr=False)

    @property
    def pose_valid(self) -> bool:
        """True when every pose entry is finite (ScanNet marks lost tracking with -inf)."""
        return bool(np.isfinite(self.camera_to_world).all())

    def _error(self, message: str) -> SensFormatError:
        return SensFormatError(f"{self.path}: frame {self.index}: {message}")

    def decode_color(self) -> np.ndarray:
        """Decode the colour image to np.uint8 [color_height, color_width, 3] RGB."""
        height, width = self.header.color_height, self.header.color_width
        compression = self.header.color_compression
        if compression == "raw":
            expected = height * width * 3
            if len(self.color_bytes) != expected:
                raise self._error(
                    f"raw colour has {len(self.color_bytes)} bytes, expected {height}x{width}x3 = {expected}"
                )
            return np.frombuffer(self.color_bytes, np.uint8).reshape(height, width, 3).copy()
        if compression not in ("jpeg", "png"):
            raise self._error(
                f"colour compression {compression!r} is not supported (supported: 'jpeg', 'png', 'raw')"
            )
        try:
            with Image.open(io.BytesIO(self.color_bytes)) as image:
                rgb = np.array(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decoders raise all three
            raise self._error(f"cannot decode {compression} colour ({exc})") from exc
        if rgb.shape != (height, width, 3):
            raise self._error(
                f"colour decodes to {rgb.shape[1]}x{rgb.shape[0]}, the header says {width}x{height}"
            )
        return rgb

    def decode_depth(self) -> np.ndarray:
        """Decode the depth image to np.uint16 [depth_height, depth_width] (units 1/depth_shift m)."""
        height, width = self.header.depth_height, self.header.depth_width
        expected = height * width * 2
        compression = self.header.depth_compression
        if compression == "zlib_ushort":
            # Cap the output one byte past the expected size so that a corrupt stream cannot inflate
            # without bound, while an over-long one is still detected.
            decompressor = zlib.decompressobj()
            try:
                raw = decompressor.decompress(self.depth_bytes, expected + 1)
            except zlib.error as exc:
                raise self._error(f"cannot inflate zlib depth ({exc})") from exc
            if len(raw) > expected:
                raise self._error(f"depth inflates to more than {height}x{width}x2 = {expected} bytes")
            if not decompressor.eof:
                raise self._error("zlib depth stream is truncated")
        elif compression == "raw_ushort":
            raw = self.depth_bytes
        else:
            raise self._error(
                f"depth compression {compression!r} is not supported (supported: 'zlib_ushort', 'raw_ushort')"
            )
        if len(raw) != expected:
            raise self._error(f"depth decodes to {len(raw)} bytes, expected {height}x{width}x2 = {expected}")
        return np.frombuffer(raw, "<u2").reshape(height, width).astype(np.uint16)


def _as_matrix4(name: str, matrix: np.ndarray | None) -> np.ndarray:
    """Return ``matrix`` as np.float32 [4, 4]; None is identity and a [3, 3] K is embedded top-left."""
    if matrix is None:
        return np.eye(4, dtype=np.float32)
    array = np.asarray(matrix, dtype=np.float64)
    if array.shape == (3, 3):
        embedded = np.eye(4)
        embedded[:3, :3] = array
        array = embedded
    if array.shape != (4, 4):
        raise ValueError(f"{name} must be a [4, 4] (or [3, 3]) matrix, got shape {list(array.shape)}")
    return array.astype(np.float32)


def _pack_header(header: SensHeader) -> bytes:
    name = header.sensor_name.encode("utf-8")
    matrices = np.stack(
        [header.intrinsic_color, header.extrinsic_color, header.intrinsic_depth, header.extrinsic_depth]
    )
    return b"".join(
        [
            _HEADER_START.pack(header.version, len(name)),
            name,
            matrices.astype("<f4").tobytes(),
            _HEADER_END.pack(
                _COLOR_CODE[header.color_compression],
                _DEPTH_CODE[header.depth_compression],
                header.color_width,
                header.color_height,
                header.depth_width,
                header.depth_height,
                header.depth_shift,
                header.num_frames,
            ),
        ]
    )


class SensReader:
    """Stream frames out of a ScanNet ``.sens`` file.

    >>> with SensReader("scene0000_00.sens") as sens:
    ...     for frame in sens.frames(step=25):
    ...         rgb, depth = frame.decode_color(), frame.decode_depth()

    The header is read and validated on construction (:attr:`header`); frames are read on demand.
    Raises :class:`SensFormatError` naming the file (and frame) for anything that is not valid v4 data.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file = open(self.path, "rb")  # owned by the reader; see close()
        try:
            self._file_size = os.fstat(self._file.fileno()).st_size
            self.header = self._read_header()
            self._frames_offset = self._file.tell()
        except BaseException:
            self._file.close()
            raise

    def _error(self, message: str) -> SensFormatError:
        return SensFormatError(f"{self.path}: {message}")

    def _read_exact(self, size: int, what: str, where: str = "") -> bytes:
        data = self._file.read(size)
        if len(data) != size:
            raise self._error(f"{where}file ends after {len(data)} of {size} bytes of {what}")
        return data

    def _read_header(self) -> SensHeader:
        version, name_length = _HEADER_START.unpack(self._read_exact(_HEADER_START.size, "the header"))
        if version != SENS_VERSION:
            raise self._error(f"header has version {version}, expected {SENS_VERSION} (ScanNet .sens v4)")
        if name_length > _MAX_SENSOR_NAME_BYTES:
            raise self._error(
                f"header gives a {name_length}-byte sensor name (at most {_MAX_SENSOR_NAME_BYTES} "
                "expected); the file is corrupt or not a .sens file"
            )
        rest = self._read_exact(name_length + _MATRICES_BYTES + _HEADER_END.size, "the header")
        matrices = np.frombuffer(rest, "<f4", count=64, offset=name_length).reshape(4, 4, 4)
        color_code, depth_code, color_w, color_h, depth_w, depth_h, depth_shift, num_frames = (
            _HEADER_END.unpack_from(rest, name_length + _MATRICES_BYTES)
        )
        if color_code not in COLOR_COMPRESSION:
            raise self._error(f"header has colour compression code {color_code}, expected one of -1, 0, 1, 2")
        if depth_code not in DEPTH_COMPRESSION:
            raise self._error(f"header has depth compression code {depth_code}, expected one of -1, 0, 1, 2")
        sizes = {
            "color_width": color_w,
            "color_height": color_h,
            "depth_width": depth_w,
            "depth_height": depth_h,
        }
        for name, value in sizes.items():
            if not 0 < value <= _MAX_IMAGE_SIDE:
                raise self._error(f"header has {name} = {value}, expected 1..{_MAX_IMAGE_SIDE}")
        if not (np.isfinite(depth_shift) and depth_shift > 0):
            raise self._error(f"header has depth_shift = {depth_shift}, expected a positive number")
        # Every frame needs at least its fixed-size header, so a frame count that cannot fit in the
        # rest of the file is a corrupt header (or a file cut off far before its end).
        remaining = self._file_size - self._file.tell()
        frames_room = remaining // FRAME_HEADER_BYTES
        if num_frames > frames_room:
            raise self._error(
                f"header says {num_frames} frames but only {remaining} bytes follow it, room for at most "
                f"{frames_room} frame headers: the file is truncated or the header is corrupt"
            )
        return SensHeader(
            version=version,
            sensor_name=rest[:name_length].decode("utf-8", errors="replace"),
            intrinsic_color=matrices[0].astype(np.float32),
            extrinsic_color=matrices[1].astype(np.float32),
            intrinsic_depth=matrices[2].astype(np.float32),
            extrinsic_depth=matrices[3].astype(np.float32),
            color_compression=COLOR_COMPRESSION[color_code],
            depth_compression=DEPTH_COMPRESSION[depth_code],
            color_width=color_w,
            color_height=color_h,
            depth_width=depth_w,
            depth_height=depth_h,
            depth_shift=float(depth_shift),
            num_frames=num_frames,
        )

    def __len__(self) -> int:
        return self.header.num_frames

    def frames(self, step: int = 1, start: int = 0) -> Iterator[SensFrame]:
        """Yield frames ``start, start + step, ...`` one at a time, in file order.

        Frame sizes vary, so every frame header up to the last selected frame is read, but the colour
        and depth bytes of unselected frames are skipped with ``seek``. Memory stays at one frame.
        Each step re-seeks to its own offset, so two generators over one reader do not interfere.
        """
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        num_frames = self.header.num_frames
        if start >= num_frames:
            return
        last_selected = start + (num_frames - 1 - start) // step * step
        offset = self._frames_offset
        for index in range(last_selected + 1):
            if self._file.closed:
                raise ValueError(f"{self.path}: reader was closed while frames were being read")
            where = f"frame {index} of {num_frames}: "
            self._file.seek(offset)
            frame_header = self._read_exact(FRAME_HEADER_BYTES, "the frame header", where)
            timestamp_color, timestamp_depth, color_size, depth_size = _FRAME_SCALARS.unpack_from(
                frame_header, _FRAME_POSE_BYTES
            )
            payload_offset = offset + FRAME_HEADER_BYTES
            available = self._file_size - payload_offset
            if color_size + depth_size > available:
                # Checked against the file size so that skipped frames (never read) are caught too.
                raise self._error(
                    f"{where}file ends after {available} of {color_size + depth_size} bytes "
                    "of the frame's colour and depth data"
                )
            offset = payload_offset + color_size + depth_size
            if index < start or (index - start) % step:
                continue
            color_bytes = self._read_exact(color_size, "colour data", where)
            depth_bytes = self._read_exact(depth_size, "depth data", where)
            camera_to_world = np.frombuffer(frame_header, "<f4", count=16).reshape(4, 4)
            yield SensFrame(
                index=index,
                camera_to_world=camera_to_world.astype(np.float32),
                timestamp_color=timestamp_color,
                timestamp_depth=timestamp_depth,
                color_bytes=color_bytes,
                depth_bytes=depth_bytes,
                header=self.header,
                path=self.path,
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SensReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class SensWriter:
    """Write a ScanNet v4 ``.sens`` file: jpeg colour, zlib_ushort depth.

    >>> with SensWriter("scene.sens", sensor_name="synth", intrinsic_color=K_color,
    ...                 intrinsic_depth=K_depth, color_width=640, color_height=480,
    ...                 depth_width=320, depth_height=240) as sens:
    ...     sens.write_frame(camera_to_world, rgb, depth_mm)

    Data goes to a temporary file beside ``path`` (:func:`pri3d.io.atomic.atomic_write`); the frame
    count is patched into the header and the file is moved onto ``path`` only when the ``with`` block
    (or :meth:`close`) ends cleanly. An exception inside the
    block deletes the temporary file, so a partial ``.sens`` never appears under the final name.
    Intrinsics/extrinsics are [4, 4] (a [3, 3] intrinsic is embedded); extrinsics default to identity.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sensor_name: str,
        intrinsic_color: np.ndarray,
        intrinsic_depth: np.ndarray,
        color_width: int,
        color_height: int,
        depth_width: int,
        depth_height: int,
        extrinsic_color: np.ndarray | None = None,
        extrinsic_depth: np.ndarray | None = None,
        depth_shift: float = 1000.0,
        jpeg_quality: int = 90,
    ) -> None:
        self.path = Path(path)
        sizes = {
            "color_width": color_width,
            "color_height": color_height,
            "depth_width": depth_width,
            "depth_height": depth_height,
        }
        for name, value in sizes.items():
            if not (isinstance(value, int | np.integer) and 0 < value <= _MAX_IMAGE_SIDE):
                raise ValueError(f"{self.path}: {name} must be an int in 1..{_MAX_IMAGE_SIDE}, got {value!r}")
        if not (np.isfinite(depth_shift) and depth_shift > 0):
            raise ValueError(f"{self.path}: depth_shift must be a positive number, got {depth_shift!r}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"{self.path}: jpeg_quality must be in 1..100, got {jpeg_quality!r}")
        if intrinsic_color is None or intrinsic_depth is None:
            raise ValueError(f"{self.path}: intrinsic_color and intrinsic_depth are required")
        self.jpeg_quality = jpeg_quality
        self.header = SensHeader(
            version=SENS_VERSION,
            sensor_name=sensor_name,
            intrinsic_color=_as_matrix4("intrinsic_color", intrinsic_color),
            extrinsic_color=_as_matrix4("extrinsic_color", extrinsic_color),
            intrinsic_depth=_as_matrix4("intrinsic_depth", intrinsic_depth),
            extrinsic_depth=_as_matrix4("extrinsic_depth", extrinsic_depth),
            color_compression="jpeg",
            depth_compression="zlib_ushort",
            color_width=int(color_width),
            color_height=int(color_height),
            depth_width=int(depth_width),
            depth_height=int(depth_height),
            depth_shift=float(depth_shift),
            num_frames=0,
        )
        header_bytes = _pack_header(self.header)
        # num_frames is the header's last field; it is written as 0 now and patched on close.
        self._num_frames_offset = len(header_bytes) - 8
        self._output = atomic_write(self.path, "wb")  # committed by close(), discarded by abort()
        self._file = self._output.file
        self._file.write(header_bytes)

    @property
    def num_frames(self) -> int:
        """Frames written so far."""
        return self.header.num_frames

    def _encode_color(self, color: np.ndarray | bytes, where: str) -> bytes:
        height, width = self.header.color_height, self.header.color_width
        if isinstance(color, bytes | bytearray | memoryview):
            color = bytes(color)
            if not color.startswith(b"\xff\xd8"):
                raise ValueError(f"{where}colour bytes are not a JPEG (no FF D8 start-of-image marker)")
            with Image.open(io.BytesIO(color)) as image:  # reads the JPEG header only, no decode
                if image.size != (width, height):
                    raise ValueError(
                        f"{where}colour JPEG is {image.size[0]}x{image.size[1]}, expected {width}x{height}"
                    )
            return color
        color = np.asarray(color)
        if color.dtype != np.uint8 or color.shape != (height, width, 3):
            raise ValueError(
                f"{where}colour must be uint8 [{height}, {width}, 3] RGB, "
                f"got {color.dtype} {list(color.shape)}"
            )
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(color)).save(buffer, format="JPEG", quality=self.jpeg_quality)
        return buffer.getvalue()

    def write_frame(
        self,
        camera_to_world: np.ndarray,
        color: np.ndarray | bytes,
        depth: np.ndarray,
        timestamp_color: int = 0,
        timestamp_depth: int = 0,
    ) -> None:
        """Append one frame.

        Args:
            camera_to_world: [4, 4] pose; -inf entries mark an invalid pose, as in ScanNet.
            color: np.uint8 [color_height, color_width, 3] RGB, or bytes of an already-encoded JPEG.
            depth: np.uint16 [depth_height, depth_width] in units of 1/depth_shift m, 0 = invalid.
            timestamp_color, timestamp_depth: non-negative integers (ScanNet uses microseconds).
        """
        if self._file.closed:
            raise ValueError(f"{self.path}: write_frame after close")
        where = f"{self.path}: frame {self.num_frames}: "
        pose = np.asarray(camera_to_world)
        if pose.shape != (4, 4) or not np.issubdtype(pose.dtype, np.number):
            raise ValueError(
                f"{where}camera_to_world must be a numeric [4, 4] matrix, got {list(pose.shape)}"
            )
        depth = np.asarray(depth)
        height, width = self.header.depth_height, self.header.depth_width
        if depth.dtype != np.uint16 or depth.shape != (height, width):
            raise ValueError(
                f"{where}depth must be uint16 [{height}, {width}], got {depth.dtype} {list(depth.shape)}"
            )
        for name, value in [("timestamp_color", timestamp_color), ("timestamp_depth", timestamp_depth)]:
            if not (isinstance(value, int | np.integer) and 0 <= value < 2**64):
                raise ValueError(f"{where}{name} must be a non-negative int, got {value!r}")
        color_bytes = self._encode_color(color, where)
        depth_bytes = zlib.compress(depth.astype("<u2").tobytes())
        self._file.write(pose.astype("<f4").tobytes())
        self._file.write(
            _FRAME_SCALARS.pack(
                int(timestamp_color), int(timestamp_depth), len(color_bytes), len(depth_bytes)
            )
        )
        self._file.write(color_bytes)
        self._file.write(depth_bytes)
        self.header.num_frames += 1

    def close(self) -> None:
        """Patch the frame count into the header and move the file onto its final name."""
        if self._file.closed:
            return
        self._file.seek(self._num_frames_offset)
        self._file.write(struct.pack("<Q", self.header.num_frames))
        self._output.commit()

    def abort(self) -> None:
        """Discard everything written: close and delete the temporary file."""
        self._output.discard()

    def __enter__(self) -> SensWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
