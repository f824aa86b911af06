"""Logged traffic as per-image rows, cut into time windows.

Requests come from ``serving.log_reader`` (the one reader of the request logs). Each image
answered by the monitored version becomes a ``ServedImage``: the image statistics the
pipeline computes at ingestion (``data.coco.image_statistics``: brightness, contrast),
its size, its ``meta/*`` fields (a tf.Example request's own, else the client id as
``MonitorSettings.client_id_field``) and the served detections. Images are only
decodable when the server logged them (``--request_log_include_images``); without, the
predictions are still monitored and the inputs are reported as not logged.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import re
from collections.abc import Iterable

import numpy as np
from PIL import Image

from data import feature_spec as fs
from data.coco import image_statistics
from serving import log_reader

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> int:
    """``90s``, ``30m``, ``1h``, ``2d`` as seconds; ValueError naming the accepted forms."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text or "")
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"window {text!r}: use a positive number and a unit s, m, h or d, "
                         "e.g. 30m or 1h")
    return int(match.group(1)) * _UNITS[match.group(2)]


@dataclasses.dataclass
class ServedImage:
    timestamp: int
    digest: str
    stats: dict[str, float] | None  # brightness, contrast, width, height; None: not logged
    meta: dict[str, str]  # field -> value (camera, lighting), where the request said
    detections: log_reader.Detections


@dataclasses.dataclass
class Traffic:
    """The monitored version's images in the current and previous windows."""

    model: str
    version: int
    window_seconds: int
    start: int  # the current window is (start, end]; the previous (start - window, start]
    end: int
    current: list[ServedImage]
    previous: list[ServedImage]
    files: list[str]
    records: int
    unreadable: list[str]
    versions_seen: dict[str, int]  # "model/version" -> images, over both windows
    older_images: int  # before the previous window: not looked at


def image_row(image: log_reader.LoggedImage, timestamp: int, client_id: str,
              client_id_field: str) -> ServedImage:
    """One logged image as the monitor sees it (statistics computed as at ingestion)."""
    stats = None
    if image.encoded is not None:
        with Image.open(io.BytesIO(image.encoded)) as pil:
            pixels = np.asarray(pil.convert("RGB"))
        stats = {**image_statistics(pixels), fs.IMAGE_HEIGHT: float(pixels.shape[0]),
                 fs.IMAGE_WIDTH: float(pixels.shape[1])}
    meta = dict(image.meta)
    if client_id and client_id_field and client_id_field not in meta:
        meta[client_id_field] = client_id
    return ServedImage(timestamp, image.digest, stats, meta, image.detections)


def read(paths: Iterable[str], window_seconds: int, model: str | None = None,
         version: int | None = None, client_id_field: str = "camera",
         end: int | None = None) -> Traffic:
    """The two newest windows of one version's traffic in the logs under ``paths``.

    ``model``/``version``: which answers to monitor; by default the model and version that
    answered most images in the newest window. ``end``: the current window's end (default:
    the newest record's timestamp).

    Raises:
      FileNotFoundError: no request-log files under ``paths``.
      ValueError: the files hold no request of the wanted model/version.
    """
    files = log_reader.log_files(list(paths))
    if not files:
        raise FileNotFoundError(f"no request-log files (*.tfrecord) under {list(paths)}")
    read_state = log_reader.LogRead(files)
    requests = [r for r in log_reader.read_requests(read_state) if r.images]
    if not requests:
        raise ValueError(f"{len(files)} request-log file(s) hold no answered images")
    end = end if end is not None else max(r.timestamp for r in requests)
    start = end - window_seconds
    in_current = [r for r in requests if start < r.timestamp <= end]
    if model is None or version is None:
        answered = collections.Counter((r.model, r.version) for r in in_current
                                       for _ in r.images)
        if not answered:
            raise ValueError(f"no request in the window ending at {end}")
        (best_model, best_version), _ = answered.most_common(1)[0]
        model = model or best_model
        version = version if version is not None else best_version
    seen = collections.Counter(f"{r.model}/{r.version}" for r in requests
                               if start - window_seconds < r.timestamp <= end for _ in r.images)
    mine = [r for r in requests if r.model == model and r.version == version]
    if not mine:
        raise ValueError(f"the logs hold no request answered by model {model!r} version "
                         f"{version} (answers seen: {dict(sorted(seen.items())) or 'none'})")
    current, previous, older = [], [], 0
    for request in mine:
        if start < request.timestamp <= end:
            bucket = current
        elif start - window_seconds < request.timestamp <= start:
            bucket = previous
        else:
            older += len(request.images) if request.timestamp <= start else 0
            continue
        bucket += [image_row(i, request.timestamp, request.client_id, client_id_field)
                   for i in request.images]
    return Traffic(model=model, version=version, window_seconds=window_seconds, start=start,
                   end=end, current=current, previous=previous, files=files,
                   records=read_state.records, unreadable=read_state.unreadable,
                   versions_seen=dict(sorted(seen.items())), older_images=older)
