"""The built-in "shapes" domain: scene generator, caption grammar, parser, renderer.

Implements the contract in ``tests/fixtures/shapes-domain.md`` (v1) exactly:
an 8-colour palette, 6 shapes, 2 sizes, 5 positions, 4 relations, captions of
the form ``a [SIZE ]COLOR SHAPE[ POSITION][ on a BG background]`` or
``a [SIZE ]COLOR SHAPE RELATION a [SIZE ]COLOR SHAPE[ on a BG background]``,
six held-out colour+shape pairs, and an anti-aliased reference renderer.

Geometry is in units of the canvas side ``S`` with y growing downwards. Every
part a caption leaves out (size, position, background, the free coordinate
of a relation) is drawn from the seed, so a short caption is a true but
partial description of its image. ``render_with_layout`` also returns the
ground truth actually drawn, for tests and scoring.
"""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# --- vocabulary of the contract (order as in the spec's tables) -------------
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (245, 215, 35),
    "green": (35, 160, 60),
    "blue": (35, 85, 220),
    "purple": (135, 55, 185),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES: dict[str, float] = {"small": 0.25, "large": 0.42}
POSITIONS: dict[str, tuple[float, float]] = {
    "in the center": (0.50, 0.50),
    "on the left": (0.27, 0.50),
    "on the right": (0.73, 0.50),
    "at the top": (0.50, 0.27),
    "at the bottom": (0.50, 0.73),
}
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("purple", "star"), ("green", "triangle"), ("orange", "circle"),
    ("white", "cross"), ("blue", "diamond"), ("yellow", "square"),
})

SIZE_JITTER = 0.05        # d is scaled by a factor in [0.95, 1.05]
POSITION_JITTER = 0.04    # one-object centre jitter, in units of S
RELATION_JITTER = 0.03    # two-object centre jitter, in units of S
SHARED_RANGE = (0.40, 0.60)  # the coordinate two related objects share
MIN_SIZE, MAX_SIZE = 16, 256
# Relation -> (A centre, B centre); None marks the shared, randomly drawn coordinate.
_RELATION_CENTRES = {
    "to the left of": ((0.27, None), (0.73, None)),
    "to the right of": ((0.73, None), (0.27, None)),
    "above": ((None, 0.27), (None, 0.73)),
    "below": ((None, 0.73), (None, 0.27)),
}


class CaptionError(ValueError):
    """A caption outside the grammar of the shapes domain."""


def _allowed(name: str, value: object, choices: Iterable[str]) -> None:
    """Raise ValueError naming the allowed values when ``value`` is not one of them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(choices)}")


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a scene; ``size`` None means "not stated"."""
    color: str
    shape: str
    size: str | None = None

    def __post_init__(self) -> None:
        _allowed("colour", self.color, PALETTE)
        _allowed("shape", self.shape, SHAPES)
        if self.size is not None:
            _allowed("size", self.size, SIZES)

    def phrase(self) -> str:
        return " ".join(w for w in ("a", self.size, self.color, self.shape) if w)


@dataclass(frozen=True)
class Scene:
    """What a caption states; parts left None are drawn at random when rendering."""
    objects: tuple[ObjectSpec, ...]
    position: str | None = None     # one-object scenes only
    relation: str | None = None     # two-object scenes only (and required there)
    background: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        if len(self.objects) not in (1, 2) or not all(isinstance(o, ObjectSpec) for o in self.objects):
            raise ValueError("a scene has 1 or 2 ObjectSpec objects")
        if len(self.objects) == 1:
            if self.relation is not None:
                raise ValueError("a relation needs two objects")
            if self.position is not None:
                _allowed("position", self.position, POSITIONS)
        else:
            if self.position is not None:
                raise ValueError("a position phrase applies to one-object scenes only")
            _allowed("relation", self.relation, RELATIONS)
        if self.background is not None:
            _allowed("background", self.background, PALETTE)
            if self.background in {o.color for o in self.objects}:
                raise ValueError(f"the background {self.background!r} must differ from every object's colour")

    def caption(self) -> str:
        """The canonical caption (grammar of the spec)."""
        words = [self.objects[0].phrase()]
        if len(self.objects) == 2:
            words += [self.relation, self.objects[1].phrase()]
        elif self.position:
            words.append(self.position)
        if self.background:
            words.append(f"on a {self.background} background")
        return " ".join(words)


# --- parser --------------------------------------------------------------------
def _match(words: list[str], i: int, phrases: Iterable[str]) -> str | None:
    """The phrase (several words) that starts at words[i], if any."""
    for phrase in phrases:
        n = len(phrase.split(" "))
        if " ".join(words[i:i + n]) == phrase:
            return phrase
    return None


def _parse_object(words: list[str], i: int) -> tuple[ObjectSpec, int]:
    """Parse ``a [SIZE ]COLOR SHAPE`` starting at word i; return it and the next index."""
    def word(j: int, what: str) -> str:
        if j >= len(words):
            raise CaptionError(f"caption ends early: expected {what} after {' '.join(words)!r}")
        return words[j]

    if word(i, "'a'") != "a":
        hint = " (the grammar always uses 'a', also before vowels)" if words[i] == "an" else ""
        raise CaptionError(f"expected 'a' at word {i + 1}, got {words[i]!r}{hint}")
    i += 1
    size = None
    if word(i, "a size or colour") in SIZES:
        size, i = words[i], i + 1
    color = word(i, "a colour")
    if color not in PALETTE:
        raise CaptionError(f"unknown colour {color!r} at word {i + 1}; expected one of: {', '.join(PALETTE)}"
                           + (f" (or a size: {', '.join(SIZES)})" if size is None else ""))
    shape = word(i + 1, "a shape")
    if shape not in SHAPES:
        raise CaptionError(f"unknown shape {shape!r} at word {i + 2}; expected one of: {', '.join(SHAPES)}")
    return ObjectSpec(color, shape, size), i + 2


_CONVERSE = {"to the right of": "to the left of", "below": "above"}


def top_left_first(text: str) -> str:
    """The same caption with its two objects named top or left one first: "A below B" becomes
    "B above A", "A to the right of B" becomes "B to the left of A" (sizes go with their objects);
    any other text, in the grammar or not, comes back as it is.

    A model trained on captions in this form only has to learn that the first object goes top or
    left, a binding by word order; with both directions it must also read which way the relation
    word points (see LatentDiffusion's text_states), which the shapes CLIP all but erases.
    """
    try:
        scene = parse_caption(text)
    except CaptionError:
        return text
    if scene.relation not in _CONVERSE:
        return text
    a, b = scene.objects
    return Scene((b, a), relation=_CONVERSE[scene.relation], background=scene.background).caption()


def parse_caption(text: str) -> Scene:
    """Parse a caption of the shapes grammar into a Scene; raise CaptionError otherwise.

    Surrounding whitespace is ignored; everything else is strict: lower case,
    words separated by single spaces, no punctuation, no final period.
    """
    # character-level checks, each with its own message
    if not isinstance(text, str):
        raise CaptionError(f"a caption is a str, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise CaptionError("empty caption")
    if text.endswith("."):
        raise CaptionError("captions have no final period")
    if text != text.lower():
        raise CaptionError("captions are lower case")
    if "  " in text or any(c.isspace() and c != " " for c in text):
        raise CaptionError("words must be separated by single spaces")
    bad = sorted({c for c in text if not ("a" <= c <= "z" or c == " ")})
    if bad:
        raise CaptionError(f"unexpected characters {''.join(bad)!r}: only lower-case letters and spaces")
    words = text.split(" ")

    # first object, then a relation + second object, or a position
    first, i = _parse_object(words, 0)
    objects, position, relation, background = [first], None, None, None
    relation = _match(words, i, RELATIONS)
    if relation:
        i += len(relation.split(" "))
        if i >= len(words):
            raise CaptionError(f"the relation {relation!r} needs a second object after it")
        second, i = _parse_object(words, i)
        objects.append(second)
    else:
        position = _match(words, i, POSITIONS)
        i += len(position.split(" ")) if position else 0

    # optional background, then the end
    if words[i:i + 2] == ["on", "a"] and words[i + 3:i + 4] == ["background"]:
        background = words[i + 2]
        if background not in PALETTE:
            raise CaptionError(f"unknown background colour {background!r}; expected one of: {', '.join(PALETTE)}")
        i += 4
    if i < len(words):
        rest = " ".join(words[i:])
        if relation is None and _match(words, i, RELATIONS + tuple(POSITIONS)):
            raise CaptionError(f"unexpected {rest!r}: at most one position or relation, before the background")
        if relation and _match(words, i, POSITIONS):
            raise CaptionError(f"unexpected {rest!r}: positions apply to one-object captions only")
        raise CaptionError(f"unexpected words {rest!r} at word {i + 1}; expected "
                           + ("a position, a relation, " if len(objects) == 1 and not position else "")
                           + "'on a COLOR background' or the end")
    try:
        return Scene(tuple(objects), position, relation, background)
    except ValueError as e:  # e.g. background equal to an object's colour
        raise CaptionError(str(e)) from None


# --- layout and rendering --------------------------------------------------------
@dataclass(frozen=True)
class PlacedObject:
    """An object as drawn: box side ``d`` and centre ``(cx, cy)`` in output pixels."""
    color: str
    shape: str
    size: str       # the size word used (stated or drawn)
    d: float
    cx: float
    cy: float

    def box(self) -> tuple[float, float, float, float]:
        h = self.d / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Layout:
    """The ground truth of a rendered scene."""
    objects: tuple[PlacedObject, ...]
    background: str
    canvas: int


def _check_canvas(size: object) -> int:
    try:
        s = operator.index(size)
    except TypeError:
        raise ValueError(f"canvas size must be an int from {MIN_SIZE} to {MAX_SIZE}, got {size!r}") from None
    if not MIN_SIZE <= s <= MAX_SIZE:
        raise ValueError(f"canvas size must be from {MIN_SIZE} to {MAX_SIZE}, got {s}")
    return s


def _shape_polygons(shape: str, r: float) -> list[list[tuple[float, float]]]:
    """Polygons of a shape with half box side r, centred on the origin (y down)."""
    if shape == "square":
        h = 0.9 * r
        return [[(-h, -h), (h, -h), (h, h), (-h, h)]]
    if shape == "triangle":
        return [[(0.0, -r), (r, r), (-r, r)]]
    if shape == "diamond":
        return [[(0.0, -r), (r, 0.0), (0.0, r), (-r, 0.0)]]
    if shape == "star":  # 10 vertices alternating outer r and inner 0.4 r, first point up
        return [[(rad * math.sin(k * math.pi / 5), -rad * math.cos(k * math.pi / 5))
                 for k, rad in zip(range(10), [r, 0.4 * r] * 5)]]
    if shape == "cross":  # two bars of length 2r and thickness 2r/3
        t = r / 3
        return [[(-r, -t), (r, -t), (r, t), (-r, t)], [(-t, -r), (t, -r), (t, r), (-t, r)]]
    raise ValueError(f"unknown shape {shape!r}; expected one of: {', '.join(SHAPES)}")


def _draw(draw: ImageDraw.ImageDraw, obj: PlacedObject, k: int) -> None:
    """Draw one object on a k-times supersampled canvas."""
    # PIL fills pixels inclusively (about half a pixel beyond each edge), with
    # pixel centres at integer coordinates: shift by -0.5 and shrink by one pixel.
    cx, cy, dk = obj.cx * k - 0.5, obj.cy * k - 0.5, obj.d * k
    fill = PALETTE[obj.color]
    if obj.shape == "circle":
        r = (dk - 1) / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        return
    scale = (dk - 1) / dk
    for poly in _shape_polygons(obj.shape, dk / 2):
        draw.polygon([(cx + x * scale, cy + y * scale) for x, y in poly], fill=fill)


def _overlap(a: PlacedObject, b: PlacedObject) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _layout(scene: Scene, s: int, rng: np.random.Generator) -> Layout:
    """Draw every unstated part from rng and place the objects (units of S, then px)."""
    # sizes: stated or drawn, then d jittered by at most ±5 %
    words = [o.size or str(rng.choice(list(SIZES))) for o in scene.objects]
    ds = [SIZES[w] * (1 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)) for w in words]
    # nominal centres: position word, or the relation table with one shared coordinate
    if len(scene.objects) == 1:
        nominal = [POSITIONS[scene.position or str(rng.choice(list(POSITIONS)))]]
        jitter = POSITION_JITTER
    else:
        shared = rng.uniform(*SHARED_RANGE)
        nominal = [tuple(shared if v is None else v for v in c) for c in _RELATION_CENTRES[scene.relation]]
        jitter = RELATION_JITTER
    # jitter the centres; redraw the jitter in the rare case two large boxes would overlap
    for attempt in range(100):
        offsets = rng.uniform(-jitter, jitter, size=(len(nominal), 2)) if attempt < 99 else np.zeros((len(nominal), 2))
        placed = tuple(PlacedObject(o.color, o.shape, w, d * s, (x + dx) * s, (y + dy) * s)
                       for o, w, d, (x, y), (dx, dy) in zip(scene.objects, words, ds, nominal, offsets))
        if len(placed) == 1 or not _overlap(*placed):
            break
    assert len(placed) == 1 or not _overlap(*placed), "objects overlap"
    # background: stated, or any palette colour no object uses
    used = {o.color for o in scene.objects}
    background = scene.background or str(rng.choice([c for c in PALETTE if c not in used]))
    return Layout(placed, background, s)


def render_with_layout(scene: Scene, size: int,
                       seed: int | np.random.Generator | None = None) -> tuple[Image.Image, Layout]:
    """Render ``scene`` as an RGB ``size``x``size`` image; also return what was drawn.

    A Generator passed as ``seed`` is used (and advanced) directly.
    """
    s = _check_canvas(size)
    if not isinstance(scene, Scene):
        raise ValueError(f"expected a Scene, got {type(scene).__name__}")
    layout = _layout(scene, s, _rng(seed))
    # supersample (8x up to 64 px, else 4x), draw, then box-filter down
    k = 8 if s <= 64 else 4
    canvas = Image.new("RGB", (s * k, s * k), PALETTE[layout.background])
    draw = ImageDraw.Draw(canvas)
    for obj in layout.objects:
        _draw(draw, obj, k)
    return canvas.resize((s, s), Image.Resampling.BOX), layout


def render(scene: Scene, size: int, seed: int | np.random.Generator | None = None) -> Image.Image:
    """Render ``scene`` (see render_with_layout); deterministic for a given seed."""
    return render_with_layout(scene, size, seed)[0]


# --- scene sampling and training streams --------------------------------------------
def pairs(exclude: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The colour+shape pairs not excluded (validating the exclusion list)."""
    return _pairs_cached(frozenset(tuple(p) for p in exclude))


@functools.lru_cache(maxsize=64)
def _pairs_cached(exclude: frozenset[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    for color, shape in exclude:
        _allowed("colour in exclude", color, PALETTE)
        _allowed("shape in exclude", shape, SHAPES)
    pairs = tuple((c, sh) for c in PALETTE for sh in SHAPES if (c, sh) not in exclude)
    if not pairs:
        raise ValueError("exclude leaves no colour+shape pair to draw")
    return pairs


def _scene(rng: np.random.Generator, pairs: tuple[tuple[str, str], ...], p_optional: float,
           two: bool) -> Scene:
    """A scene whose objects come from pairs, each optional part stated with p_optional."""
    if not 0.0 <= p_optional <= 1.0:
        raise ValueError(f"p_optional must be in [0, 1], got {p_optional}")
    objects = []
    for _ in range(2 if two else 1):
        color, shape = pairs[rng.integers(len(pairs))]
        size = str(rng.choice(list(SIZES))) if rng.random() < p_optional else None
        objects.append(ObjectSpec(color, shape, size))
    position = relation = None
    if two:
        relation = RELATIONS[rng.integers(len(RELATIONS))]
    elif rng.random() < p_optional:
        position = str(rng.choice(list(POSITIONS)))
    background = None
    if rng.random() < p_optional:
        background = str(rng.choice([c for c in PALETTE if c not in {o.color for o in objects}]))
    return Scene(tuple(objects), position, relation, background)


def random_scene(rng: np.random.Generator, exclude: Iterable[tuple[str, str]] = HELD_OUT,
                 p_optional: float = 0.5, p_two: float = 0.5) -> Scene:
    """A training-stream scene: two objects with probability p_two; no pair in exclude."""
    if not 0.0 <= p_two <= 1.0:
        raise ValueError(f"p_two must be in [0, 1], got {p_two}")
    return _scene(rng, pairs(exclude), p_optional, bool(rng.random() < p_two))


def full_caption_scene(rng: np.random.Generator, exclude: Iterable[tuple[str, str]] = HELD_OUT,
                       two: bool | None = None) -> Scene:
    """A scene with every optional part stated (unambiguous captions for retrieval)."""
    two = bool(rng.random() < 0.5) if two is None else bool(two)
    return _scene(rng, pairs(exclude), 1.0, two)


class ShapesStream:
    """Seeded infinite iterator of (image, caption) training pairs.

    Item i is ``render(random_scene(rng, ...), size, rng)`` with one Generator
    ``rng = numpy.random.default_rng(seed)`` shared by all items.
    """

    def __init__(self, size: int = 32, seed: int = 0, exclude: Iterable[tuple[str, str]] = HELD_OUT,
                 p_optional: float = 0.5, p_two: float = 0.5) -> None:
        self.size = _check_canvas(size)
        self.exclude = frozenset(tuple(p) for p in exclude)
        pairs(self.exclude)  # validate early
        self.p_optional, self.p_two = p_optional, p_two
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> ShapesStream:
        return self

    def __next__(self) -> tuple[Image.Image, str]:
        scene = random_scene(self.rng, self.exclude, self.p_optional, self.p_two)
        return render(scene, self.size, self.rng), scene.caption()


def sample_batch(n: int, size: int, rng: np.random.Generator,
                 exclude: Iterable[tuple[str, str]] = HELD_OUT, p_optional: float = 0.5,
                 p_two: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """n training pairs as a uint8 array (n, size, size, 3) and their captions.

    Draws exactly as n steps of ShapesStream with the same Generator would.
    """
    s = _check_canvas(size)
    exclude = frozenset(tuple(p) for p in exclude)
    images = np.empty((n, s, s, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        scene = random_scene(rng, exclude, p_optional, p_two)
        images[i] = np.asarray(render(scene, s, rng))
        captions.append(scene.caption())
    return images, captions
