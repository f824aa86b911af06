"""Deterministic synthetic scenes, written as a real COCO object-detection dataset.

Sightline needs data it can regenerate anywhere, byte for byte, and whose distribution it
can shift on purpose: drift checks, slicing and anomaly gates are tested against named
scenarios that each change one knob of the default world (lighting mix, a new camera, a
label-policy change, an unseen class). The scenes are a real detection task: long-tailed
classes, objects in all three COCO size ranges, clutter, occlusion, noise, lighting and
per-camera looks.

Each image draws from generators seeded by ``(seed, image_id, stream)``: images do not
depend on each other or on ``num_images``, and because the scene, the capture (lighting,
camera, noise) and the unseen class use separate streams, ``night_heavy`` and
``new_camera`` re-shoot exactly the scenes that ``default`` draws, ``loose_boxes``
relabels them and ``unknown_class`` leaves them unchanged except for the images it adds an
unseen-class object to.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from tqdm import tqdm

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
# Long tail: the most common class is ~7x as frequent as the rarest.
_CLASS_WEIGHTS = (0.35, 0.25, 0.17, 0.11, 0.07, 0.05)
# Only the ``unknown_class`` scenario draws (and declares) this category.
_EXTRA_CLASS = "hexagon"

# sqrt(area) ranges inside COCO's small (< 32^2), medium and large (> 96^2) ranges.
_SIZE_BINS = ((10.0, 31.0), (33.0, 95.0), (97.0, 140.0))
# Drawn 40/30/30 so that after occlusion (large objects lose pixels to later ones) and the
# fit-in-image clamp, visible areas come out near 40/40/20 %.
_SIZE_WEIGHTS = (0.4, 0.3, 0.3)
_IMAGE_SIDE = (256, 384)  # inclusive range of width and of height
_OBJECTS_PER_IMAGE = (1, 8)  # inclusive
# An object may be hidden by later ones up to this fraction, so every label stays sensible.
_MAX_OCCLUSION = 0.6
_PLACEMENT_TRIES = 10
_MIN_COLOUR_DISTANCE = 80.0  # object vs the background under it, RGB levels
_JPEG_QUALITY = 90
_GRAIN = 6  # px between samples of the smooth fields (background texture, illumination)

# Independent random streams per image (see the module docstring).
_SCENE, _CAPTURE, _EXTRA = range(3)

_Weights = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Scenario:
    """The knobs of one data distribution; each named scenario turns one knob of the default."""

    lighting: _Weights = (("day", 0.60), ("dusk", 0.25), ("night", 0.15))
    cameras: _Weights = (("cam-a", 0.50), ("cam-b", 0.30), ("cam-c", 0.20))
    loose_class: int | None = None  # category id whose boxes are labelled loosely
    loose_pad: float = 0.25  # per side, as a fraction of the box width/height
    extra_class_rate: float = 0.0  # fraction of images with one unseen-class object


SCENARIOS: dict[str, Scenario] = {
    "default": Scenario(),
    "night_heavy": Scenario(lighting=(("day", 0.15), ("dusk", 0.15), ("night", 0.70))),
    # cam-d takes 60 %; the known cameras keep their 50/30/20 ratio in the rest.
    "new_camera": Scenario(
        cameras=(("cam-a", 0.20), ("cam-b", 0.12), ("cam-c", 0.08), ("cam-d", 0.60))
    ),
    "loose_boxes": Scenario(loose_class=2),
    "unknown_class": Scenario(extra_class_rate=0.10),
}


@dataclass(frozen=True)
class _Lighting:
    gain: float  # brightness multiplier
    contrast: float  # scale of deviations around mid-grey
    tint: tuple[float, float, float]
    noise_gain: float  # sensor gain in the dark amplifies noise
    pool: float  # 0..1, share of light from one local lamp instead of ambient


@dataclass(frozen=True)
class _Camera:
    cast: tuple[float, float, float]  # per-channel white balance
    saturation: float
    blur: float  # box-blur radius in pixels (focus, lens quality)
    noise: float  # sensor noise std in 8-bit levels, in daylight
    vignette: float  # brightness lost in the corners


_LIGHTING = {
    "day": _Lighting(1.0, 1.0, (1.0, 1.0, 1.0), 1.0, 0.0),
    "dusk": _Lighting(0.62, 0.8, (1.08, 0.92, 0.78), 1.5, 0.2),
    "night": _Lighting(0.36, 0.65, (0.8, 0.9, 1.15), 2.2, 0.6),
}
_CAMERAS = {
    "cam-a": _Camera((1.0, 1.0, 1.0), 1.0, 0.0, 3.0, 0.0),
    "cam-b": _Camera((1.1, 1.0, 0.85), 0.9, 0.8, 4.0, 0.1),
    "cam-c": _Camera((0.9, 1.05, 1.0), 0.65, 0.0, 8.0, 0.15),
    "cam-d": _Camera((1.12, 0.82, 1.1), 1.25, 1.5, 6.0, 0.45),  # magenta, soft, dark corners
}

# --- shapes: polygons around the origin with radius ~1; holes have fill False ----------
_Polygon = tuple[np.ndarray, bool]


def _regular(n: int) -> np.ndarray:
    angles = np.arange(n) * (2 * math.pi / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


_ROUND = _regular(48)
_SQUARE, _TRIANGLE, _HEXAGON, _DECAGON = _regular(4), _regular(3), _regular(6), _regular(10)


def _star(rng: np.random.Generator) -> list[_Polygon]:
    vertices = _DECAGON.copy()
    vertices[1::2] *= rng.uniform(0.38, 0.5)
    return [(vertices, True)]


def _cross(rng: np.random.Generator) -> list[_Polygon]:
    t = rng.uniform(0.22, 0.34)  # half the arm thickness
    quarter = np.array([(t, 1.0), (t, t), (1.0, t)])
    turns = [quarter @ np.array([[c, s], [-s, c]]) for c, s in ((1, 0), (0, -1), (-1, 0), (0, 1))]
    return [(np.concatenate(turns), True)]


_SHAPES: dict[str, Callable[[np.random.Generator], list[_Polygon]]] = {
    "circle": lambda rng: [(_ROUND, True)],
    "square": lambda rng: [(_SQUARE, True)],
    "triangle": lambda rng: [(_TRIANGLE, True)],
    "star": _star,
    "cross": _cross,
    "ring": lambda rng: [(_ROUND, True), (_ROUND * rng.uniform(0.45, 0.65), False)],
    _EXTRA_CLASS: lambda rng: [(_HEXAGON, True)],
}


def _shoelace(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(x[:-1] @ y[1:] - x[1:] @ y[:-1] + x[-1] * y[0] - x[0] * y[-1]))


def _pose(vertices: np.ndarray, scale: float, angle: float, aspect: float = 1.0) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return (vertices * (aspect * scale, scale)) @ np.array([[c, s], [-s, c]])


def _rasterize(polygons: list[_Polygon]) -> np.ndarray:
    """Boolean mask of posed polygons, cropped to their extent plus a 1 px margin."""
    low = np.concatenate([v for v, _ in polygons]).min(axis=0) - 1.0
    high = np.concatenate([v for v, _ in polygons]).max(axis=0) + 1.0
    width, height = (int(n) for n in np.ceil(high - low))
    canvas = Image.new("L", (width, height))
    draw = ImageDraw.Draw(canvas)
    for vertices, fill in polygons:
        draw.polygon((vertices - low).ravel().tolist(), fill=255 if fill else 0)
    return np.asarray(canvas) > 0


# --- scene -----------------------------------------------------------------------------
@dataclass
class _Object:
    category_id: int
    x0: int
    y0: int
    mask: np.ndarray  # the whole shape, in the window at (x0, y0)
    full: int  # pixels of the whole shape
    visible: int  # pixels not hidden by later objects


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A gradient with coarse blotches and mottled grain, so flat-colour tricks don't work."""
    rows, cols = height // _GRAIN + 2, width // _GRAIN + 2
    c0, c1 = rng.uniform(30, 225, (2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.ogrid[0 : 1 : rows * 1j, 0 : 1 : cols * 1j]
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    cells = int(rng.integers(3, 7))
    coarse = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
    blotches = np.asarray(coarse.resize((cols, rows), Image.BICUBIC), dtype=np.float64) - 128.0
    grain = rng.uniform(-14, 14, (rows, cols, 3))
    low = c0 + (c1 - c0) * ramp[..., None] + blotches * (40 / 128) + grain
    small = Image.fromarray(np.clip(low, 0, 255).astype(np.uint8))
    return small.resize((width, height), Image.BILINEAR)


# Distractors, drawn so they can't pass for a class (bars vs squares, ellipses vs circles).
_LINE = np.array([(-1.0, 0.0), (1.0, 0.0)])
_BAR = np.array([(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)])
_ELLIPSE = _regular(24)
_BLOB_ANGLES = np.arange(len(_ELLIPSE)) * (2 * math.pi / len(_ELLIPSE))


def _clutter(rng: np.random.Generator, canvas: Image.Image) -> None:
    """Non-class distractors: lines, arcs, bars, elongated ellipses and smooth blobs."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    n = int(rng.integers(4, 21))
    colours = [tuple(c) for c in rng.integers(0, 256, (n, 3)).tolist()]
    centres = rng.uniform((0, 0), (width, height), (n, 2))
    sizes, angles = rng.uniform(6, 70, n), rng.uniform(0, 2 * math.pi, n)
    kinds = rng.integers(5, size=n)
    params = rng.random((n, 4))  # per-kind shape parameters in [0, 1)
    for colour, centre, size, angle, kind, p in zip(
        colours, centres, sizes, angles, kinds, params, strict=True
    ):
        if kind == 0:
            ends = centre + _pose(_LINE, 2 * size, angle)
            draw.line(ends.ravel().tolist(), fill=colour, width=1 + int(4 * p[0]))
        elif kind == 1:
            start, span = 360 * p[0], 60 + 180 * p[1]
            box = [*(centre - size), *(centre + size)]
            draw.arc(box, start, start + span, fill=colour, width=1 + int(3 * p[2]))
        else:
            if kind == 2:
                unit, aspect = _BAR, 3 + 5 * p[0]
            elif kind == 3:
                unit, aspect = _ELLIPSE, 2 + 2 * p[0]
            else:  # a lumpy oval: too elongated for a circle, too smooth for a star
                phase = 2 * math.pi * p[2:]
                radius = (
                    1
                    + (0.2 + 0.15 * p[0]) * np.cos(2 * _BLOB_ANGLES + phase[0])
                    + 0.12 * p[1] * np.cos(3 * _BLOB_ANGLES + phase[1])
                )
                unit = radius[:, None] * _ELLIPSE
                aspect = 1.0
            vertices = centre + _pose(unit, size / math.sqrt(aspect), angle, aspect)
            draw.polygon(vertices.ravel().tolist(), fill=colour)


def _place(
    rng: np.random.Generator,
    scene: Image.Image,
    labels: np.ndarray,
    objects: list[_Object],
    category_id: int,
    name: str,
) -> None:
    """Draws one object where it hides no earlier object too much; skips it if none fits."""
    height, width = labels.shape
    polygons = _SHAPES[name](rng)
    low, high = _SIZE_BINS[rng.choice(len(_SIZE_BINS), p=_SIZE_WEIGHTS)]
    side = rng.uniform(low, high)
    angle, aspect = rng.uniform(0, 2 * math.pi), rng.uniform(0.88, 1.12)
    unit = [(_pose(v, 1.0, angle, aspect), fill) for v, fill in polygons]
    area = sum(_shoelace(v) * (1 if fill else -1) for v, fill in unit)
    extent = np.ptp(np.concatenate([v for v, _ in unit]), axis=0).max()
    scale = min(side / math.sqrt(area), (min(height, width) - 4) / extent)
    mask = _rasterize([(v * scale, fill) for v, fill in unit])
    mh, mw = mask.shape
    keep = 1 - _MAX_OCCLUSION
    for _ in range(_PLACEMENT_TRIES):
        y0, x0 = int(rng.integers(0, height - mh + 1)), int(rng.integers(0, width - mw + 1))
        window = labels[y0 : y0 + mh, x0 : x0 + mw]
        hidden = np.bincount(window[mask], minlength=len(objects) + 1)[1:]
        if all(o.visible - k >= keep * o.full for o, k in zip(objects, hidden, strict=True)):
            break
    else:
        return
    for obj, k in zip(objects, hidden, strict=True):
        obj.visible -= int(k)
    window[mask] = len(objects) + 1

    box = (x0, y0, x0 + mw, y0 + mh)
    under = np.array(scene.resize((1, 1), Image.BOX, box=box).getpixel((0, 0)))
    for _ in range(10):  # a colour that stands out from what it covers
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour - under) >= _MIN_COLOUR_DISTANCE:
            break
    # Light falls from one side: up to `shade` darker across the object.
    shade_angle, shade = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.35)
    yy, xx = np.ogrid[-1 : 1 : mh * 1j, -1 : 1 : mw * 1j]
    ramp = (xx * math.cos(shade_angle) + yy * math.sin(shade_angle) + math.sqrt(2)) / 2.9
    shading = Image.fromarray(np.rint(255 * (1 - shade * ramp)).astype(np.uint8))
    solid = Image.new("RGB", (mw, mh), tuple(colour.tolist()))
    scene.paste(ImageChops.multiply(solid, shading.convert("RGB")), box, Image.fromarray(mask))
    pixels = int(mask.sum())
    objects.append(_Object(category_id, x0, y0, mask, pixels, pixels))


def _draw_scene(
    image_id: int, seed: int, scenario: Scenario
) -> tuple[Image.Image, np.ndarray, list[_Object]]:
    """The noiseless, evenly lit scene, its per-pixel object index (0 = none) and objects."""
    rng = np.random.default_rng([seed, image_id, _SCENE])
    width, height = (int(n) for n in rng.integers(_IMAGE_SIDE[0], _IMAGE_SIDE[1] + 1, 2))
    scene = _background(rng, height, width)
    _clutter(rng, scene)
    labels = np.zeros((height, width), dtype=np.uint8)
    objects: list[_Object] = []
    count = int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))
    for category_id in rng.choice(len(CLASS_NAMES), size=count, p=_CLASS_WEIGHTS) + 1:
        _place(rng, scene, labels, objects, int(category_id), CLASS_NAMES[category_id - 1])
    extra = np.random.default_rng([seed, image_id, _EXTRA])
    if extra.random() < scenario.extra_class_rate:
        _place(extra, scene, labels, objects, len(CLASS_NAMES) + 1, _EXTRA_CLASS)
    return scene, labels, objects


def _pick(weights: _Weights, u: float) -> str:
    """Inverse-CDF pick, so the same ``u`` maps to comparable choices across scenarios."""
    cumulative = np.cumsum([w for _, w in weights])
    return weights[int(np.searchsorted(cumulative / cumulative[-1], u, side="right"))][0]


@functools.cache
def _noise_bank(sigma: float) -> Image.Image:
    """Gaussian noise of std ``sigma`` around 128 that images take random windows of.

    Fresh per-image noise was the largest single cost of generation; a shared bank per
    noise level, cropped at a random offset, is indistinguishable for a detector.
    """
    side = 2 * _IMAGE_SIDE[1]
    noise = np.random.default_rng(0).standard_normal((side, side, 3), dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(noise * sigma + 128), 0, 255).astype(np.uint8))


def _capture(
    scene: Image.Image, lighting: _Lighting, camera: _Camera, rng: np.random.Generator
) -> Image.Image:
    """Lights the scene and applies the camera's optics, colour and sensor noise.

    Contrast, gain, tints and saturation are all linear in the pixel colour, so they are one
    affine colour transform; all full-size work runs in Pillow's C code, for speed.
    """
    if camera.blur:
        scene = scene.filter(ImageFilter.BoxBlur(camera.blur))
    width, height = scene.size
    contrast = lighting.contrast * rng.uniform(0.9, 1.1)
    gain = lighting.gain * rng.uniform(0.85, 1.15) * np.multiply(lighting.tint, camera.cast)
    shading = None
    if camera.vignette or lighting.pool:
        # Illumination is smooth: compute it on a coarse grid and let Pillow upsample it.
        rows, cols = height // _GRAIN + 2, width // _GRAIN + 2
        yy, xx = np.ogrid[-1 : 1 : rows * 1j, -1 : 1 : cols * 1j]
        illumination = 1.0 - camera.vignette * (xx * xx + yy * yy) / 2
        if lighting.pool:
            cx, cy = rng.uniform(-0.8, 0.8, 2)
            lamp = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.5)
            illumination = illumination * (1 - lighting.pool + 2.2 * lighting.pool * lamp)
        peak = float(illumination.max())  # an 8-bit multiplier is <= 1: the peak goes into
        gain = gain * peak  # the colour transform instead
        shading = Image.fromarray(np.rint(illumination * (255 / peak)).astype(np.uint8))

    saturate = camera.saturation * np.eye(3) + (1 - camera.saturation) / 3
    # out = M @ rgb + b, with M = saturate @ diag(gain * contrast).
    linear = saturate @ np.diag(gain * contrast)
    offset = saturate @ (127.5 * (1 - contrast) * gain)
    lit = scene.convert("RGB", tuple(np.column_stack([linear, offset]).ravel().tolist()))
    if shading is not None:
        shading = shading.resize((width, height), Image.BILINEAR).convert("RGB")
        lit = ImageChops.multiply(lit, shading)

    noise = _noise_bank(camera.noise * lighting.noise_gain)
    x0 = int(rng.integers(0, noise.width - width + 1))
    y0 = int(rng.integers(0, noise.height - height + 1))
    return ImageChops.add(lit, noise.crop((x0, y0, x0 + width, y0 + height)), offset=-128)


def _visible_box(obj: _Object, labels: np.ndarray, index: int) -> tuple[list[float], int]:
    """Tight ``[x, y, w, h]`` box and pixel count of the object's unoccluded pixels."""
    mh, mw = obj.mask.shape
    visible = labels[obj.y0 : obj.y0 + mh, obj.x0 : obj.x0 + mw] == index
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    x, y = obj.x0 + int(cols[0]), obj.y0 + int(rows[0])
    box = [float(x), float(y), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
    return box, int(visible.sum())


def _loosen(box: list[float], pad: float, width: int, height: int) -> list[float]:
    x, y, w, h = box
    x0, y0 = max(0.0, x - pad * w), max(0.0, y - pad * h)
    x1, y1 = min(float(width), x + w + pad * w), min(float(height), y + h + pad * h)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _render(
    image_id: int, seed: int, scenario: Scenario
) -> tuple[Image.Image, dict[str, str], list[tuple[int, list[float], int]]]:
    """One image, its metadata and its ``(category_id, bbox, area)`` labels."""
    scene, labels, objects = _draw_scene(image_id, seed, scenario)
    rng = np.random.default_rng([seed, image_id, _CAPTURE])
    meta = {"camera": _pick(scenario.cameras, rng.random())}
    meta["lighting"] = _pick(scenario.lighting, rng.random())
    image = _capture(scene, _LIGHTING[meta["lighting"]], _CAMERAS[meta["camera"]], rng)
    targets = []
    for index, obj in enumerate(objects, start=1):
        box, area = _visible_box(obj, labels, index)
        if obj.category_id == scenario.loose_class:
            box = _loosen(box, scenario.loose_pad, *image.size)
        targets.append((obj.category_id, box, area))
    return image, meta, targets


def generate(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    scenario: str = "default",
    first_image_id: int = 1,
    progress: TextIO | None = None,
) -> pathlib.Path:
    """Writes ``annotations.json`` and ``images/*.jpg`` under ``out_dir``; returns the json path.

    Each image is a pure function of ``(seed, scenario, image id)``, so datasets can be
    regenerated rather than stored, and ``first_image_id`` lets a later batch (a new span)
    continue the id space with new images. Image entries carry the ``camera`` and
    ``lighting`` metadata fields (``feature_spec.META_FIELDS``) as top-level keys.
    A progress bar is drawn on ``progress`` (e.g. ``sys.stderr``) if given.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; valid: {', '.join(SCENARIOS)}")
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    knobs = SCENARIOS[scenario]
    out = pathlib.Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = CLASS_NAMES + ((_EXTRA_CLASS,) if knobs.extra_class_rate else ())
    images: list[dict] = []
    annotations: list[dict] = []
    ids = range(first_image_id, first_image_id + num_images)
    for image_id in tqdm(ids, desc=f"synth {scenario}", unit="img", file=progress,
                         disable=progress is None):
        image, meta, targets = _render(image_id, seed, knobs)
        file_name = f"images/{image_id:06d}.jpg"
        image.save(out / file_name, format="JPEG", quality=_JPEG_QUALITY)
        width, height = image.size
        images.append(
            {"id": image_id, "file_name": file_name, "width": width, "height": height, **meta}
        )
        for category_id, box, area in targets:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": box,
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": "Sightline synthetic shapes", "scenario": scenario, "seed": seed},
        "images": images,
        "categories": [
            {"id": i, "name": name, "supercategory": "shape"}
            for i, name in enumerate(names, start=1)
        ],
        "annotations": annotations,
    }
    path = out / "annotations.json"
    path.write_text(json.dumps(coco))
    return path
