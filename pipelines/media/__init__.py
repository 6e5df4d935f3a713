"""Pixels in and out of Atelier: tensors to images, uploads, PNG metadata and mp4 videos.

* :mod:`pipelines.media.pixels`: model output <-> pixels (:func:`to_uint8`, :func:`to_pil`,
  :func:`row`, :func:`to_tensor`), any PIL mode to RGB, resizing (:func:`enlarge`,
  :func:`square`) and pictures side by side (:func:`strip`).
* :mod:`pipelines.media.uploads`: :func:`load_image` checks an upload and makes it RGB, or
  raises :class:`ImageInputError` with a message for the user.
* :mod:`pipelines.media.pngmeta`: :func:`save_png` / :func:`read_meta` keep a run's settings
  in the PNG; :func:`format_parameters`, :func:`image_digest`.
* :mod:`pipelines.media.video`: :class:`VideoWriter` / :func:`write_video` write browser-ready
  mp4 with the bundled ffmpeg; :func:`new_output_path` names saved files.
* :mod:`pipelines.media.frames`: a run's video frames kept (:class:`FrameKeeper`), saved and loaded
  (:func:`save_frames`, :func:`load_frames`) and made into a video again (:func:`rerender`).

The names below are re-exported, so ``from pipelines import media; media.load_image(...)``
works. The package never imports gradio, and imports torch only if the caller already did
(or asks for a tensor).
"""
from pipelines.media.pixels import (
    enlarge,
    row,
    square,
    strip,
    to_pil,
    to_rgb,
    to_tensor,
    to_uint8,
)
from pipelines.media.pngmeta import (
    META_KEY,
    format_parameters,
    image_digest,
    read_meta,
    save_png,
)
from pipelines.media.uploads import ImageInputError, load_image
from pipelines.media.video import VideoWriter, ffmpeg_exe, new_output_path, write_video
from pipelines.media.frames import FrameKeeper, load_frames, rerender, save_frames  # noqa: E402  (after video)

__all__ = [
    "META_KEY",
    "FrameKeeper",
    "ImageInputError",
    "VideoWriter",
    "enlarge",
    "ffmpeg_exe",
    "format_parameters",
    "image_digest",
    "load_frames",
    "load_image",
    "new_output_path",
    "read_meta",
    "rerender",
    "row",
    "save_frames",
    "save_png",
    "square",
    "strip",
    "to_pil",
    "to_rgb",
    "to_tensor",
    "to_uint8",
    "write_video",
]
