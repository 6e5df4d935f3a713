"""The attribute judge: which stated attributes of a shapes caption hold in an image.

Image analysis against the geometry of the spec (``shapes-domain.md``), with no
learned model, so it is independent of every engine and of their training:

1. **Background**: the median colour of a thin border ring, named by the
   nearest palette entry. The ring's spread estimates the image noise.
2. **Objects**: pixels far enough from the background colour, grouped into
   8-connected components. Each component's colour is the median of its
   core pixels (those furthest from the background), named by the nearest
   palette entry; specks smaller than a sixth of the smallest object are
   dropped.
3. **Coverage**: each pixel's coverage ``alpha`` by its object, the projection
   of (pixel - background) on (object colour - background). Anti-aliased
   and blurred edges count fractionally, so the area ``sum(alpha)`` and the
   centroid are sub-pixel accurate and unchanged by blur.
4. **Shape**: each of the six shapes is drawn (supersampled) with the box
   side that gives the measured area and placed on the measured centroid
   (a triangle's centroid lies d/6 below its box centre), plain and
   blurred; the shape whose drawing overlaps the coverage best (soft IoU)
   wins. Its box side ``d`` gives the size: small when d < 0.335 S.
5. **Caption**: every stated attribute is checked on the assignment of
   caption objects to detected objects that makes the most of them hold,
   so a wrong attribute always fails and a right one is never missed
   because of the order objects were found in.

Positions follow the spec: the object's centre in the stated third
("in the center": the middle third both ways). A relation holds when both
centres are in the stated halves along its axis and the objects are further
apart along that axis than across it (so "A above B" is false of two objects
side by side at nearly the same height).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from shapes import PALETTE, SHAPES, Scene, parse_caption

SMALL_LARGE = 0.335          # box side / S: small below, large at or above
_NAMES = list(PALETTE)
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float64)
_SUPERSAMPLE = 8
_BLURS = (0.0, 0.6, 1.2)     # template blurs tried, in pixels at 32 px (scaled with S)
_MAX_OBJECTS = 4             # detections considered when matching a caption (largest first)


def _star_polygon() -> np.ndarray:
    """Five-pointed star of outer radius 1 (inner 0.4), one point up, y down."""
    k = np.arange(10)
    rad = np.where(k % 2 == 0, 1.0, 0.4)
    return np.stack([rad * np.sin(k * np.pi / 5), -rad * np.cos(k * np.pi / 5)], 1)


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


_STAR = _star_polygon()
# Area of each shape as a fraction of its box side squared (spec geometry).
AREA_FRACTION = {
    "circle": math.pi / 4,
    "square": 0.81,
    "triangle": 0.5,
    "diamond": 0.5,
    "star": _polygon_area(_STAR) / 4,   # polygon above has radius 1, i.e. box side 2
    "cross": 5 / 9,
}
# Box centre minus area centroid, in units of d (y down): only the triangle's differ.
_CENTROID_OFFSET = {"triangle": -1 / 6}


def _inside(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Point-in-shape for a box of side 2 centred on the origin (coordinates in units of d/2)."""
    x, y = np.broadcast_arrays(x, y)
    ax, ay = np.abs(x), np.abs(y)
    if shape == "circle":
        return x * x + y * y <= 1
    if shape == "square":
        return (ax <= 0.9) & (ay <= 0.9)
    if shape == "triangle":  # apex (0, -1), base from (-1, 1) to (1, 1)
        return (y <= 1) & (ax <= (y + 1) / 2)
    if shape == "diamond":
        return ax + ay <= 1
    if shape == "cross":
        return ((ax <= 1) & (ay <= 1 / 3)) | ((ay <= 1) & (ax <= 1 / 3))
    if shape == "star":  # even-odd rule over the polygon's edges
        inside = np.zeros(x.shape, dtype=bool)
        px, py = _STAR[:, 0], _STAR[:, 1]
        for i in range(len(_STAR)):
            x0, y0, x1, y1 = px[i], py[i], px[i - 1], py[i - 1]
            crosses = (y0 > y) != (y1 > y)
            xint = x0 + (y - y0) * (x1 - x0) / (y1 - y0 if y1 != y0 else 1e-12)
            inside ^= crosses & (x < xint)
        return inside
    raise ValueError(f"unknown shape {shape!r}")


def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return a
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = a.shape
    p = np.pad(a, r)
    p = sum(k[i] * p[i:i + h, :] for i in range(2 * r + 1))
    return sum(k[i] * p[:, i:i + w] for i in range(2 * r + 1))


def template(shape: str, d: float, cx: float, cy: float, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Coverage (h, w) of pixels [x0, x0+w) x [y0, y0+h) by ``shape`` of box side d centred at (cx, cy)."""
    k = _SUPERSAMPLE
    offs = (np.arange(k) + 0.5) / k
    xs = (x0 + np.repeat(np.arange(w), k) + np.tile(offs, w) - cx) / (d / 2)
    ys = (y0 + np.repeat(np.arange(h), k) + np.tile(offs, h) - cy) / (d / 2)
    inside = _inside(shape, xs[None, :], ys[:, None]).astype(np.float64)
    return inside.reshape(h, k, w, k).mean(axis=(1, 3))


def nearest_colour(rgb, exclude: str | None = None) -> str:
    dist = np.linalg.norm(_RGB - np.asarray(rgb, dtype=np.float64), axis=1)
    if exclude is not None:
        dist[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(np.argmin(dist))]


@dataclass(frozen=True)
class Detection:
    """One object found in an image; lengths and centres in pixels of the image."""
    color: str
    shape: str
    d: float                    # box side of the best-fitting shape
    cx: float                   # box centre
    cy: float
    area: float                 # coverage sum, in pixels
    shape_scores: dict = field(default_factory=dict, compare=False)

    def size_word(self, canvas: int) -> str:
        return "small" if self.d / canvas < SMALL_LARGE else "large"


@dataclass(frozen=True)
class Analysis:
    canvas: int
    background: str
    objects: tuple[Detection, ...]   # largest first
    noise: float                     # estimated noise (RGB units, per channel)


@dataclass(frozen=True)
class Verdict:
    caption: str
    checks: tuple[tuple[str, bool], ...]     # (attribute, holds), in caption order
    analysis: Analysis
    matched: tuple[Detection | None, ...]    # the detection judged for each caption object

    @property
    def correct(self) -> bool:
        return all(ok for _, ok in self.checks)

    @property
    def accuracy(self) -> float:
        return sum(ok for _, ok in self.checks) / len(self.checks)

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.checks if not ok]


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an array of flat indices."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for start in np.flatnonzero(mask):
        if seen.flat[start]:
            continue
        seen.flat[start] = True
        stack, comp = [start], []
        while stack:
            i = stack.pop()
            comp.append(i)
            y, x = divmod(i, w)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        j = yy * w + xx
                        if mask.flat[j] and not seen.flat[j]:
                            seen.flat[j] = True
                            stack.append(j)
        out.append(np.array(comp))
    return out


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(r):
        m = out.copy()
        m[1:] |= out[:-1]
        m[:-1] |= out[1:]
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        m[1:, 1:] |= out[:-1, :-1]
        m[:-1, :-1] |= out[1:, 1:]
        m[1:, :-1] |= out[:-1, 1:]
        m[:-1, 1:] |= out[1:, :-1]
        out = m
    return out


def _split_by_colour(comp: np.ndarray, img: np.ndarray, bg: np.ndarray, background: str,
                     min_area: float) -> list[np.ndarray]:
    """Split a component that holds two touching objects of different colours.

    Each pixel is explained as a mix of the background and one palette colour;
    the component is split when two colours each explain a connected blob of
    at least ``min_area`` pixels (a single object's noisy or jittered pixels
    never form two such blobs).
    """
    s = img.shape[0]
    pix = img.reshape(-1, 3)[comp] - bg
    cand = [i for i, n in enumerate(_NAMES) if n != background]
    v = _RGB[cand] - bg                                          # (C, 3)
    a = np.clip(pix @ v.T / np.maximum((v * v).sum(1), 1e-9), 0, 1)  # (P, C)
    resid = np.linalg.norm(pix[:, None, :] - a[..., None] * v[None], axis=2)
    label = np.argmin(resid, axis=1)
    parts = []
    for c in np.unique(label):
        m = np.zeros(s * s, dtype=bool)
        m[comp[label == c]] = True
        blobs = [b for b in _components(m.reshape(s, s)) if len(b) >= min_area]
        parts += blobs
    if len(parts) < 2:
        return [comp]
    # every pixel of the component goes to the nearest kept blob
    ys, xs = np.divmod(comp, s)
    owner = np.full(len(comp), -1)
    best = np.full(len(comp), np.inf)
    for j, b in enumerate(parts):
        by, bx = np.divmod(b, s)
        dist = np.min((ys[:, None] - by[None]) ** 2 + (xs[:, None] - bx[None]) ** 2, axis=1)
        owner = np.where(dist < best, j, owner)
        best = np.minimum(best, dist)
    return [comp[owner == j] for j in range(len(parts))]


def _image_array(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        a = np.asarray(image.convert("RGB"), dtype=np.float64)
    else:
        a = np.asarray(image, dtype=np.float64)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
    if a.shape[0] != a.shape[1] or not 16 <= a.shape[0] <= 1024:
        raise ValueError(f"the judge needs a square image from 16 to 1024 px, got {a.shape[1]}x{a.shape[0]}")
    return a


def _fit_shape(alpha: np.ndarray, area: float, cx: float, cy: float, scale: float) -> tuple[str, float, float, float, dict]:
    """Best shape for a coverage map: (shape, d, box cx, box cy, scores)."""
    h, w = alpha.shape
    scores, fits = {}, {}
    for shape in SHAPES:
        d = math.sqrt(area / AREA_FRACTION[shape])
        bcx, bcy = cx, cy + _CENTROID_OFFSET.get(shape, 0.0) * d
        t0 = template(shape, d, bcx, bcy, 0, 0, w, h)
        best = 0.0
        for b in _BLURS:
            t = _gaussian_blur(t0, b * scale)
            best = max(best, float(np.minimum(alpha, t).sum() / max(np.maximum(alpha, t).sum(), 1e-9)))
        scores[shape], fits[shape] = best, (d, bcx, bcy)
    shape = max(scores, key=scores.get)
    return (shape, *fits[shape], scores)


def analyse(image) -> Analysis:
    """Find the background and the objects of an image (PIL, or an (S, S, 3) array in 0..255 or 0..1)."""
    img = _image_array(image)
    s = img.shape[0]
    ring = max(1, s // 32)
    border = np.concatenate([img[:ring].reshape(-1, 3), img[-ring:].reshape(-1, 3),
                             img[:, :ring].reshape(-1, 3), img[:, -ring:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    noise = float(np.median(1.4826 * np.median(np.abs(border - bg), axis=0)))
    background = nearest_colour(bg)
    others = np.linalg.norm(_RGB - _RGB[_NAMES.index(background)], axis=1)
    gap = float(np.min(others[others > 0]))
    dist = np.linalg.norm(img - bg, axis=2)
    mask = dist > max(0.3 * gap, 3.5 * noise, 8.0)
    min_area = 0.004 * s * s
    scale = s / 32
    found = []
    comps = [part for comp in _components(mask) if len(comp) >= min_area / 2
             for part in _split_by_colour(comp, img, bg, background, min_area)]
    for comp in comps:
        if len(comp) < min_area / 2:
            continue
        dd = dist.flat[comp]
        core = comp[dd >= 0.6 * dd.max()]
        colour = np.median(img.reshape(-1, 3)[core], axis=0)
        name = nearest_colour(colour)
        if name == background:
            continue
        # coverage over the component and a margin that holds its soft edge
        region = np.zeros(s * s, dtype=bool)
        region[comp] = True
        region = _dilate(region.reshape(s, s), 1 + s // 64)
        ys, xs = np.nonzero(region)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        v = colour - bg
        alpha = ((img[y0:y1, x0:x1] - bg) @ v) / max(float(v @ v), 1e-9)
        alpha = np.clip(alpha, 0, 1) * region[y0:y1, x0:x1]
        area = float(alpha.sum())
        if area < min_area:
            continue
        gy, gx = np.mgrid[0:y1 - y0, 0:x1 - x0]
        cx = float((alpha * (gx + 0.5)).sum() / area)
        cy = float((alpha * (gy + 0.5)).sum() / area)
        shape, d, bcx, bcy, scores = _fit_shape(alpha, area, cx, cy, scale)
        found.append(Detection(name, shape, d, bcx + x0, bcy + y0, area, scores))
    found.sort(key=lambda o: -o.area)
    return Analysis(s, background, tuple(found), noise)


def _third(v: float) -> int:
    return 0 if v < 1 / 3 else (2 if v >= 2 / 3 else 1)


def _position_holds(o: Detection, position: str, s: int) -> bool:
    x, y = _third(o.cx / s), _third(o.cy / s)
    return {"in the center": x == 1 and y == 1, "on the left": x == 0, "on the right": x == 2,
            "at the top": y == 0, "at the bottom": y == 2}[position]


def _relation_holds(a: Detection, b: Detection, relation: str, s: int) -> bool:
    dx, dy = b.cx - a.cx, b.cy - a.cy
    half = s / 2
    if relation == "to the left of":
        return a.cx < half <= b.cx and abs(dx) > abs(dy)
    if relation == "to the right of":
        return b.cx < half <= a.cx and abs(dx) > abs(dy)
    if relation == "above":
        return a.cy < half <= b.cy and abs(dy) > abs(dx)
    if relation == "below":
        return b.cy < half <= a.cy and abs(dy) > abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def _checks(scene: Scene, analysis: Analysis, matched) -> list[tuple[str, bool]]:
    s = analysis.canvas
    out = []
    two = len(scene.objects) == 2
    for i, (spec, det) in enumerate(zip(scene.objects, matched), 1):
        who = f"object {i} " if two else ""
        out.append((f"{who}colour", det is not None and det.color == spec.color))
        out.append((f"{who}shape", det is not None and det.shape == spec.shape))
        if spec.size:
            out.append((f"{who}size", det is not None and det.size_word(s) == spec.size))
    if scene.position:
        out.append(("position", matched[0] is not None and _position_holds(matched[0], scene.position, s)))
    if scene.relation:
        ok = None not in matched and _relation_holds(matched[0], matched[1], scene.relation, s)
        out.append(("relation", ok))
    if scene.background:
        out.append(("background", analysis.background == scene.background))
    return out


def check(analysis: Analysis, scene: Scene | str) -> Verdict:
    """Judge an analysed image against a caption (text in the grammar, or a Scene)."""
    if isinstance(scene, str):
        scene = parse_caption(scene)
    k = len(scene.objects)
    pool = list(analysis.objects[:_MAX_OBJECTS]) + [None] * k
    best, best_score = None, -1
    for matched in itertools.permutations(pool, k):
        if any(m is not None and matched.count(m) > 1 for m in matched):
            continue
        checks = _checks(scene, analysis, matched)
        score = sum(ok for _, ok in checks)
        if score > best_score:
            best, best_score = (checks, matched), score
    checks, matched = best
    return Verdict(scene.caption(), tuple(checks), analysis, tuple(matched))


def judge(image, caption: Scene | str) -> Verdict:
    """Which of the caption's stated attributes hold in ``image``; see the module docstring."""
    return check(analyse(image), caption)
