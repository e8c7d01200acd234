"""cineforge.io: video and image files <-> uint8 frames and [-1, 1] video tensors."""

from cineforge.io.video import (
    VIDEO_EXTENSIONS,
    from_uint8_frames,
    read_image,
    read_video,
    to_uint8_frames,
    write_image,
    write_video,
)

__all__ = [
    "VIDEO_EXTENSIONS",
    "from_uint8_frames",
    "read_image",
    "read_video",
    "to_uint8_frames",
    "write_image",
    "write_video",
]
