"""Train the built-in shapes CLIP: a tiny transformers CLIPModel on shapes scenes.

    python -m lab.train.clip --out presets/weights/shapes-clip --steps 2500

1. A byte-level BPE text tokenizer is trained with the `tokenizers` library on the
   captions, using the pipeline of CLIP's own tokenizer, and saved as a standard
   `CLIPTokenizer`, so the folder loads like `openai/clip-vit-base-patch32`.
2. The model is trained with the symmetric contrastive loss of CLIP on (image,
   caption) pairs from the shapes stream (held-out colour+shape pairs excluded).
   Images get mild per-pixel noise, as VQGAN+CLIP cutouts do.
3. `evaluate` reports text-to-image R@1 among 100 fresh scenes, on captions that
   state every optional part (so one caption fits one image), for seen and for
   held-out colour+shape pairs, plus the same for the stream's short captions.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import shapes
from pipelines.models.clip import CLIP, load_clip, save_clip
from pipelines.models.vqgan_files import from_pretrained
from pipelines.presets import load_preset
from pipelines.vqgan_clip_cutouts import MakeCutouts, add_noise
from pipelines.vqgan_clip_ops import clamp_with_grad, codebook_bounds, init_z_from_tokens, vector_quantize
from lab.train import common

log = logging.getLogger("atelier.train.clip")

SIZE = 32
EVAL_SEED = 20_000


def train_tokenizer(n_captions: int = 20_000, vocab_size: int = 600, seed: int = 0):
    """A CLIPTokenizer whose BPE vocabulary is learnt from shapes captions (all pairs, held-out too:
    the words are all seen in training, only their combinations are held out)."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    rng = np.random.default_rng(seed)
    captions = [shapes.random_scene(rng, exclude=frozenset()).caption() for _ in range(n_captions)]
    empty = CLIPTokenizer()  # CLIP's normaliser, pre-tokenizer and specials, no vocabulary yet
    backend = empty.backend_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(captions, trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    # every byte alone and word-final, as in CLIP's own vocabulary: no text ever maps to the
    # unknown token (which is <|endoftext|>, where CLIP pools the sentence)
    alphabet = {tok for ch in pre_tokenizers.ByteLevel.alphabet() for tok in (ch, ch + "</w>")}
    # ids in an order that does not depend on the process: the BPE trainer and the alphabet (both
    # hash-ordered) number single characters differently from run to run, "a</w>" among them
    products = [a + b for a, b in merges]
    singles = sorted((set(model["vocab"]) | alphabet) - set(specials) - set(products))
    vocab = {tok: i for i, tok in enumerate(specials + singles + list(dict.fromkeys(products)))}
    return CLIPTokenizer(vocab=vocab, merges=merges)


def build_clip(tokenizer, width: int = 128, layers: int = 4, tower: str | None = None) -> CLIP:
    """Both towers `width` wide and `layers` deep (32-wide heads), embeddings `width` long: the
    CLIP before the built-in one was 128 x 4. `tower="conv"`: the image tower is
    `pipelines.models.clip.ConvTower` (pooled width 2 x `width`) in place of the ViT."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    from pipelines.models.clip import install_tower

    heads = max(1, width // 32)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=32,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    # 32 px images in 4x4 patches: 64 patch tokens + CLS
    if tower:   # the ViT fields stay valid but unused
        vision = CLIPVisionConfig(image_size=SIZE, patch_size=4, hidden_size=2 * width, intermediate_size=2 * width,
                                  num_hidden_layers=0, num_attention_heads=heads, tower=tower)
    else:
        vision = CLIPVisionConfig(image_size=SIZE, patch_size=4, hidden_size=width, intermediate_size=4 * width,
                                  num_hidden_layers=layers, num_attention_heads=heads)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=width)
    model = CLIPModel(config)
    install_tower(model)
    return CLIP(model, tokenizer)


def with_text_of(clip: CLIP, donor: CLIP) -> CLIP:
    """`clip` with the text tower, text projection, logit scale and tokenizer of `donor` (same width): a new
    image tower learns against a text tower that already knows the words."""
    clip.model.text_model.load_state_dict(donor.model.text_model.state_dict())
    clip.model.text_projection.load_state_dict(donor.model.text_projection.state_dict())
    clip.model.logit_scale.data.copy_(donor.model.logit_scale.data)
    clip.tokenizer = donor.tokenizer
    return clip


def to_pixels(batch_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(batch_u8)).permute(0, 3, 1, 2).float().div(255)


def _scenes(rng, n, held_out: bool, full: bool):
    """n scenes with every optional part stated (full) or stream-style; held-out ones use a held-out pair."""
    out = []
    while len(out) < n:
        if full:
            s = shapes.full_caption_scene(rng, exclude=frozenset() if held_out else shapes.HELD_OUT)
        else:
            s = shapes.random_scene(rng, exclude=frozenset() if held_out else shapes.HELD_OUT)
        has_held = any((o.color, o.shape) in shapes.HELD_OUT for o in s.objects)
        if has_held == held_out:
            out.append(s)
    return out


@torch.no_grad()
def recall_at_1(clip: CLIP, scenes, rng) -> float:
    imgs = np.stack([np.asarray(shapes.render(s, SIZE, rng)) for s in scenes])
    img = F.normalize(clip.encode_image(to_pixels(imgs)), dim=-1)
    txt = F.normalize(clip.encode_text([s.caption() for s in scenes]), dim=-1)
    return float((txt @ img.t()).argmax(dim=1).eq(torch.arange(len(scenes))).float().mean())


@torch.no_grad()
def evaluate(clip: CLIP, rounds: int = 5) -> dict:
    """Text-to-image R@1 among 100 candidates, averaged over `rounds` sets of fresh scenes."""
    clip.eval()
    out = {}
    for name, held, full in [("r1_seen_full", False, True), ("r1_heldout_full", True, True),
                             ("r1_seen_stream", False, False)]:
        vals = []
        for r in range(rounds):
            rng = np.random.default_rng([EVAL_SEED, r, held, full])
            vals.append(recall_at_1(clip, _scenes(rng, 100, held, full), rng))
        out[name] = round(float(np.mean(vals)), 3)
    # binding: does an image prefer its caption to the same words with two colours swapped?
    rng = np.random.default_rng([EVAL_SEED, 99])
    pairs = []
    while len(pairs) < 200:
        scene = shapes.full_caption_scene(rng)
        swapped = swap_colours(scene.caption(), rng)
        if swapped:
            pairs.append((scene, swapped))
    imgs = np.stack([np.asarray(shapes.render(sc, SIZE, rng)) for sc, _ in pairs])
    with torch.no_grad():
        img = F.normalize(clip.encode_image(to_pixels(imgs)), dim=-1)
        true = F.normalize(clip.encode_text([sc.caption() for sc, _ in pairs]), dim=-1)
        swap = F.normalize(clip.encode_text([w for _, w in pairs]), dim=-1)
    out["binding_acc"] = round(float(((img * true).sum(-1) > (img * swap).sum(-1)).float().mean()), 3)
    out["shape_acc"] = shape_accuracy(clip, np.random.default_rng([EVAL_SEED, 98]))
    for held in (True, False):    # each its own draws, so the seen figure does not move with the held-out one
        pictures, captions = colour_pick(clip, held, np.random.default_rng([EVAL_SEED, 97, held]))
        out["colour_pick_" + ("heldout" if held else "seen")] = pictures
        out["colour_caption_pick_" + ("heldout" if held else "seen")] = captions
    out.update(probes(clip))
    return out


@torch.no_grad()
def colour_pick(clip: CLIP, held_out: bool, rng: np.random.Generator, n: int = 60,
                renders: int = 2) -> tuple[float, float]:
    """Colour binding, both ways, over `n` one-object scenes and the same scene with the object in each other
    colour (not the background's):
    - pictures: how often the caption scores its own picture above every recoloured one. This is what VQGAN+CLIP
      climbs: where it fails, the loop is drawn to another colour;
    - captions: how often the picture scores its own caption above every recoloured caption.
    `held_out`: the object is one of the held-out pairs in turn (a colour and a shape no training picture or
    caption put together); else a seen pair."""
    wins, caption_wins = [], []
    for k in range(n):
        if held_out:
            colour, shape = sorted(shapes.HELD_OUT)[k % len(shapes.HELD_OUT)]
        else:
            while (colour := str(rng.choice(list(shapes.PALETTE))), shape := str(rng.choice(shapes.SHAPES))) in shapes.HELD_OUT:
                pass
        background = str(rng.choice([c for c in shapes.PALETTE if c != colour]))
        size, position = str(rng.choice(list(shapes.SIZES))), str(rng.choice(list(shapes.POSITIONS)))
        scenes = [shapes.Scene((shapes.ObjectSpec(c, shape, size),), position=position, background=background)
                  for c in [colour] + [c for c in shapes.PALETTE if c not in (colour, background)]]
        imgs = np.stack([np.asarray(shapes.render(s, SIZE, rng)) for s in scenes for _ in range(renders)])
        img = F.normalize(clip.encode_image(to_pixels(imgs)), dim=-1).view(len(scenes), renders, -1).mean(1)
        txt = F.normalize(clip.encode_text([s.caption() for s in scenes]), dim=-1)
        score = img @ txt.t()                     # (picture, caption)
        wins.append(bool(score[0, 0] > score[1:, 0].max()))
        caption_wins.append(bool(score[0, 0] > score[0, 1:].max()))
    return round(float(np.mean(wins)), 3), round(float(np.mean(caption_wins)), 3)


@torch.no_grad()
def shape_accuracy(clip: CLIP, rng: np.random.Generator, n: int = 200) -> float:
    """How often an image prefers its full caption to the same caption with one object's shape changed.
    Colour, background and layout say nothing here: only the shape tells the two apart (chance 50 %)."""
    scenes = [shapes.full_caption_scene(rng) for _ in range(n)]
    swapped = [swap_shape(s.caption(), rng) for s in scenes]
    imgs = np.stack([np.asarray(shapes.render(s, SIZE, rng)) for s in scenes])
    img = F.normalize(clip.encode_image(to_pixels(imgs)), dim=-1)
    true = F.normalize(clip.encode_text([s.caption() for s in scenes]), dim=-1)
    swap = F.normalize(clip.encode_text(swapped), dim=-1)
    return round(float(((img * true).sum(-1) > (img * swap).sum(-1)).float().mean()), 3)


def lone_objects(n: int, seed: int = 0):
    """Renders of one object of a random shape, colour, size and position; the shape's and position's indices."""
    rng = np.random.default_rng(seed)
    colours, sizes, positions = list(shapes.PALETTE), list(shapes.SIZES), list(shapes.POSITIONS)
    images, shape_ids, position_ids = [], [], []
    for i in range(n):
        s, colour = int(rng.integers(len(shapes.SHAPES))), colours[rng.integers(len(colours))]
        size, p = sizes[rng.integers(len(sizes))], int(rng.integers(len(positions)))
        if (colour, shapes.SHAPES[s]) in shapes.HELD_OUT:
            continue
        caption = f"a {size} {colour} {shapes.SHAPES[s]} {positions[p]}"
        images.append(np.asarray(shapes.render(shapes.parse_caption(caption), 32, i)))
        shape_ids.append(s)
        position_ids.append(p)
    return to_pixels(np.stack(images)) * 2 - 1, torch.tensor(shape_ids), torch.tensor(position_ids)


def linear_probe(e: torch.Tensor, y: torch.Tensor, train: float = 0.8) -> float:
    """Held-back accuracy of a softmax regression from embeddings e (N, D) to labels y (N,)."""
    n = int(train * len(e))
    w = torch.zeros(e.shape[1], int(y.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(500):
        opt.zero_grad()
        loss = F.cross_entropy(e[:n] * 10 @ w + b, y[:n]) + 1e-4 * w.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((e[n:] * 10 @ w + b).argmax(1) == y[n:]).float().mean().item()


@torch.no_grad()
def probes(clip: CLIP, n: int = 3000) -> dict:
    """Linear probes (`linear_probe`) from the image embedding of lone objects to their shape and position:
    the quick version of `bench/clip_probe.py`, logged while training (chance 16.7 % and 20 %)."""
    from pipelines.models.unclip import image_embedding

    x, shape_ids, position_ids = lone_objects(n, seed=1)
    e = torch.cat([image_embedding(clip, x[k:k + 256]) for k in range(0, len(x), 256)])
    with torch.enable_grad():
        return {"probe_shape": round(linear_probe(e, shape_ids), 3), "probe_position": round(linear_probe(e, position_ids), 3)}


def swap_shape(caption: str, rng: np.random.Generator) -> str:
    """The same caption with one object's shape changed to another (never to a held-out colour+shape
    pair): a caption only the shape tells apart from the original."""
    return swap_one(caption, rng, ("shape",))


CHANGES = ("shape", "colour", "size", "position", "relation", "background")


def swap_one(caption: str, rng: np.random.Generator, kinds=CHANGES) -> str | None:
    """The caption with one stated part changed, of a kind drawn from `kinds` among those the caption
    states (an object's shape, colour or size, the position, the relation, the background), never to a
    held-out colour+shape pair: a caption only that one attribute tells apart from the original.
    None when the caption states none of them."""
    scene = shapes.parse_caption(caption)
    objs = list(scene.objects)
    colours = list(shapes.PALETTE)
    other = lambda values, current: [v for v in values if v != current]
    options = []
    for k, o in enumerate(objs):
        if "shape" in kinds:
            options.append(("shape", k, [x for x in other(shapes.SHAPES, o.shape) if (o.color, x) not in shapes.HELD_OUT]))
        if "colour" in kinds:
            options.append(("colour", k, [c for c in other(colours, o.color)
                                          if (c, o.shape) not in shapes.HELD_OUT and c != scene.background]))
        if "size" in kinds and o.size:
            options.append(("size", k, other(list(shapes.SIZES), o.size)))
    if "position" in kinds and scene.position:
        options.append(("position", None, other(list(shapes.POSITIONS), scene.position)))
    if "relation" in kinds and scene.relation:
        options.append(("relation", None, other(shapes.RELATIONS, scene.relation)))
    if "background" in kinds and scene.background:
        options.append(("background", None, [c for c in other(colours, scene.background)
                                              if all(c != o.color for o in objs)]))
    options = [o for o in options if o[2]]
    if not options:
        return None
    kind, k, values = options[int(rng.integers(len(options)))]
    value = values[int(rng.integers(len(values)))]
    position, relation, background = scene.position, scene.relation, scene.background
    if kind in ("shape", "colour", "size"):
        o = objs[k]
        objs[k] = shapes.ObjectSpec(value if kind == "colour" else o.color, value if kind == "shape" else o.shape,
                                    value if kind == "size" else o.size)
    elif kind == "position":
        position = value
    elif kind == "relation":
        relation = value
    else:
        background = value
    return shapes.Scene(tuple(objs), position, relation, background).caption()


def swap_colours(caption: str, rng: np.random.Generator) -> str | None:
    """The same words with two colours exchanged (object and background, or the two objects):
    a caption CLIP must tell apart from the original, which random batches rarely ask of it."""
    scene = shapes.parse_caption(caption)
    objs = list(scene.objects)
    if len(objs) == 2 and objs[0].color != objs[1].color and rng.random() < 0.5:
        a, b = objs
        objs = [shapes.ObjectSpec(b.color, a.shape, a.size), shapes.ObjectSpec(a.color, b.shape, b.size)]
        return shapes.Scene(tuple(objs), scene.position, scene.relation, scene.background).caption()
    if scene.background is not None:
        k = int(rng.integers(len(objs)))
        if objs[k].color != scene.background and all(o.color != objs[k].color for i, o in enumerate(objs) if i != k):
            bg, objs[k] = objs[k].color, shapes.ObjectSpec(scene.background, objs[k].shape, objs[k].size)
            try:
                return shapes.Scene(tuple(objs), scene.position, scene.relation, bg).caption()
            except ValueError:  # the swap would put an object on its own colour
                return None
    return None


def fragment(caption: str, rng: np.random.Generator) -> str:
    """One stated part of a caption, alone ("a red circle", "on a blue background", "at the top"):
    true of the image, and what VQGAN+CLIP users write between '|'."""
    scene = shapes.parse_caption(caption)
    parts = [o.phrase() for o in scene.objects]
    if scene.background:
        parts.append(f"on a {scene.background} background")
    if scene.position:
        parts.append(scene.position)
    return parts[int(rng.integers(len(parts)))]


def draw_batch(seed: int, n: int, hard_negatives: bool, fragments: float, changes: tuple, step: int):
    """One step's data, from the step alone (so --workers can render it ahead): the scenes (uint8) and
    their captions, colour-swapped negative captions, and the one-change negatives with their pictures.

    1. Colour-swapped captions are extra negatives for every image; some captions are cut to one part.
    2. One-change negatives (`changes`, kinds of `CHANGES`): each caption with one stated part changed
       (`swap_one`), and a picture of that changed caption. Each is a negative for its own row alone (it
       may well fit another caption of the batch). Parts without an object ("at the top") have none
       (None; has_object False): their column is masked.
    """
    imgs, captions = shapes.sample_batch(n, SIZE, common.batch_rng(seed, step))
    rng = common.batch_rng(seed + 1, step)
    negatives = [c for c in (swap_colours(c, rng) for c in captions) if c and c not in captions] if hard_negatives else []
    if fragments:
        captions = [fragment(c, rng) if rng.random() < fragments else c for c in captions]
        negatives = [c for c in negatives if c not in captions]
    shape_neg, has_object, shape_imgs = [], [], None
    if changes:
        srng = common.batch_rng(seed + 2, step)
        for c in captions:
            # object phrases come first and start with "a"; only scenes have a one-change negative
            neg = swap_one(c, srng, changes) if c.startswith("a ") else None
            has_object.append(neg is not None)
            shape_neg.append(neg)
        if any(has_object):
            shape_imgs = np.stack([np.asarray(shapes.render(shapes.parse_caption(c), SIZE, srng))
                                   for c in shape_neg if c])
    return imgs, captions, negatives, shape_neg, has_object, shape_imgs


ATTRIBUTES = {"shape": len(shapes.SHAPES), "colour": len(shapes.PALETTE), "size": len(shapes.SIZES),
              "position": len(shapes.POSITIONS), "relation": len(shapes.RELATIONS), "background": len(shapes.PALETTE),
              "shape 2": len(shapes.SHAPES), "colour 2": len(shapes.PALETTE)}


def attribute_labels(captions: list[str]) -> torch.Tensor:
    """(N, len(ATTRIBUTES)) class indices of what each caption states, -100 where it states nothing of that kind
    (a caption cut to "at the top" states only the position; a short caption no size or background)."""
    colours, sizes, positions = list(shapes.PALETTE), list(shapes.SIZES), list(shapes.POSITIONS)
    col = {name: k for k, name in enumerate(ATTRIBUTES)}
    out = torch.full((len(captions), len(ATTRIBUTES)), -100, dtype=torch.long)
    for i, c in enumerate(captions):
        if c in shapes.POSITIONS:
            out[i, col["position"]] = positions.index(c)
            continue
        if c.startswith("on a "):
            out[i, col["background"]] = colours.index(c.split()[2])
            continue
        scene = shapes.parse_caption(c)
        for j, o in enumerate(scene.objects):
            out[i, col["shape" if j == 0 else "shape 2"]] = shapes.SHAPES.index(o.shape)
            out[i, col["colour" if j == 0 else "colour 2"]] = colours.index(o.color)
            if o.size and j == 0:
                out[i, col["size"]] = sizes.index(o.size)
        if scene.position:
            out[i, col["position"]] = positions.index(scene.position)
        if scene.relation:
            out[i, col["relation"]] = shapes.RELATIONS.index(scene.relation)
        if scene.background:
            out[i, col["background"]] = colours.index(scene.background)
    return out


class AttributeHeads(torch.nn.Module):
    """Training only (not exported): one linear softmax head per attribute on the unit-norm image embedding,
    the form the probes read, so that each stated attribute is held plainly, not only ranked."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(dim, n) for n in ATTRIBUTES.values())

    def forward(self, e: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = [F.cross_entropy(h(e * 10), labels[:, k], ignore_index=-100, reduction="sum")
                  for k, h in enumerate(self.heads)]
        return sum(losses) / max(1, int((labels != -100).sum()))


class LoopChains:
    """The adversary of --adversary: `n` VQGAN+CLIP loops running against the CLIP being trained.

    Each chain is the shapes preset's loop on one training caption (`pipelines/vqgan_clip.py`, batched):
    random codebook tokens, Adam on the latents (lr), straight-through quantisation, the decoder, `cutn`
    cutouts with the preset's augmentations and noise, the spherical distance to the caption's embedding,
    latents clamped to the codebook's range. `advance` moves every chain on by some iterations with the
    CLIP as it is now; a chain that has run `iterations` is judged (`lab.eval.judge`, logged as the loop's
    accuracy on training captions) and starts over on a new caption. Ages start staggered, so the pictures
    of every stage of a run are among the negatives at any time. Each chain keeps a clean render of its
    caption: `sample` returns (caption, render, loop picture) triples, the render the positive and the
    loop's picture the negative of that caption (`train`).
    """

    def __init__(self, vqgan, n: int, iterations: int, lr: float, cutn: int, augments: str, seed: int, device,
                 noise: float = 0.1):
        self.vqgan, self.n, self.iterations, self.lr, self.cutn = vqgan, n, iterations, lr, cutn
        self.device = torch.device(device)
        self.codebook = vqgan.codebook.detach().float().to(self.device)
        self.z_min, self.z_max = (b.to(self.device) for b in codebook_bounds(self.codebook))
        self.cutouts = MakeCutouts(SIZE, 1, method="latest", augments=tuple(a for a in augments.split(",") if a),
                                   noise_fac=noise)
        self.rng = np.random.default_rng([seed, 7])
        self.gen = torch.Generator(self.device).manual_seed(seed + 7)
        side = SIZE // vqgan.factor
        self.z = torch.zeros(n, self.codebook.shape[1], side, side, device=self.device)
        self.m, self.v = torch.zeros_like(self.z), torch.zeros_like(self.z)
        self.age = torch.zeros(n, dtype=torch.long)
        self.captions, self.renders = [""] * n, np.zeros((n, SIZE, SIZE, 3), np.uint8)
        self.target = torch.zeros(n, 1, device=self.device)
        self.picture = torch.zeros(n, 3, SIZE, SIZE, device=self.device)
        self.verdicts: list = []       # (correct, failed attributes) of chains judged since the last `judged()`
        self.restart(torch.arange(n))
        self.age = torch.from_numpy(self.rng.integers(0, iterations, n))   # staggered: a chain's first run is shorter

    def restart(self, idx: torch.Tensor) -> None:
        """New captions (half with every part stated, as the evaluation's, half the stream's) and random tokens."""
        side = self.z.shape[-1]
        for i in idx.tolist():
            scene = (shapes.full_caption_scene(self.rng) if self.rng.random() < 0.5 else shapes.random_scene(self.rng))
            self.captions[i] = scene.caption()
            self.renders[i] = np.asarray(shapes.render(scene, SIZE, self.rng))
            tokens = torch.randint(len(self.codebook), (side * side,), generator=self.gen, device=self.device)
            self.z[i] = init_z_from_tokens(tokens, self.codebook, side, side)[0]
        self.m[idx], self.v[idx], self.age[idx] = 0, 0, 0
        self.text_stale = True

    def synth(self, z: torch.Tensor) -> torch.Tensor:
        z_q = vector_quantize(z.movedim(1, 3), self.codebook).movedim(3, 1)
        return clamp_with_grad(self.vqgan.decode(z_q).float().add(1).div(2), 0, 1)

    def advance(self, clip: CLIP, steps: int) -> None:
        """`steps` loop iterations of every chain against `clip` (its weights get no gradient)."""
        if self.text_stale or clip.training:   # the captions' embeddings move as the CLIP trains
            with torch.no_grad():
                self.target = F.normalize(clip.encode_text(self.captions).float(), dim=-1)
            self.text_stale = False
        b1, b2, eps = 0.9, 0.999, 1e-8     # torch.optim.Adam's defaults, one step count per chain
        for _ in range(steps):
            z = self.z.detach().requires_grad_(True)
            x = self.synth(z)
            cuts = self.cutouts.augment_batch(x.repeat_interleave(self.cutn, 0), self.gen)
            cuts = add_noise(cuts, self.cutouts.noise_fac, self.gen)
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda"):
                e = F.normalize(clip.encode_image(cuts).float(), dim=-1).view(self.n, self.cutn, -1)
            chord = (e - self.target[:, None]).norm(dim=-1)
            loss = chord.div(2).arcsin().pow(2).mul(2).mean(1).sum()   # pipelines.vqgan_clip_ops.spherical_dist
            g, = torch.autograd.grad(loss, z)
            with torch.no_grad():
                self.picture = x.detach()
                self.age += 1
                t = self.age.to(self.device, torch.float32).view(-1, 1, 1, 1)
                self.m.mul_(b1).add_(g, alpha=1 - b1)
                self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = self.lr / (1 - b1 ** t)
                self.z = torch.maximum(torch.minimum(self.z - step * self.m / ((self.v / (1 - b2 ** t)).sqrt() + eps),
                                                     self.z_max), self.z_min)
            done = (self.age >= self.iterations).nonzero().flatten()
            if len(done):
                self.judge(done)
                self.restart(done)

    def judge(self, idx: torch.Tensor) -> None:
        from lab.eval.judge import judge

        with torch.no_grad():
            pictures = self.synth(self.z[idx.to(self.device)]).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for k, i in enumerate(idx.tolist()):
            v = judge(pictures[k], self.captions[i])
            self.verdicts.append((v.correct, v.failed))

    def judged(self) -> dict:
        """The loop's accuracy on the training captions of the chains finished since the last call (judge)."""
        if not self.verdicts:
            return {}
        out = {"loop_correct": round(float(np.mean([c for c, _ in self.verdicts])), 3), "loop_judged": len(self.verdicts)}
        for kind in ("colour", "shape", "background", "position", "size"):
            out[f"loop_{kind}_wrong"] = round(float(np.mean([any(kind in f for f in fs)
                                                             for _, fs in self.verdicts])), 3)
        self.verdicts = []
        return out

    def sample(self, m: int, min_age: int):
        """Up to `m` chains at least `min_age` iterations old: their captions, renders (uint8) and current pictures."""
        ready = (self.age >= min_age).nonzero().flatten().numpy()
        pick = self.rng.choice(ready, size=min(m, len(ready)), replace=False) if len(ready) else ready
        return [self.captions[i] for i in pick], self.renders[pick], self.picture[torch.from_numpy(pick).to(self.device)]


def train(args) -> None:
    accelerator, run_dir = common.setup(args, "clip")
    if args.init:  # fine-tune an exported CLIP (its tokenizer comes with it)
        clip = load_clip(args.init)
        clip.model.requires_grad_(True)
    elif args.text_from:  # a new image tower against an exported CLIP's text tower (and its tokenizer)
        donor = load_clip(args.text_from)
        clip = with_text_of(build_clip(donor.tokenizer, donor.embed_dim, donor.model.config.text_config.num_hidden_layers,
                                       args.tower), donor)
        clip.model.requires_grad_(True)
    else:
        clip = build_clip(train_tokenizer(seed=args.seed), args.width, args.layers, args.tower)
    tokenizer = clip.tokenizer
    log.info("CLIP with %d parameters, vocabulary %d", sum(p.numel() for p in clip.parameters()), len(tokenizer))
    heads = AttributeHeads(clip.embed_dim).to(accelerator.device) if args.attribute_loss else None
    trained = torch.nn.ModuleDict({"clip": clip, **({"heads": heads} if heads is not None else {})})
    decay = [p for n, p in trained.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in trained.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    clip, opt, raw, start, extra, metrics = common.start(args, accelerator, run_dir, clip, opt)
    if heads is not None and "heads" in extra:   # a resumed run keeps its attribute heads
        heads.load_state_dict(extra["heads"])
    kinds = changes(args)
    gen = torch.Generator().manual_seed(args.seed)
    vqgan = from_pretrained(args.vqgan).eval().requires_grad_(False).to(accelerator.device) if args.vqgan else None
    augment = (MakeCutouts(SIZE, 1, method="latest", augments=tuple(args.augment.split(",")), noise_fac=0.0)
               if args.augment else None)
    chains = None
    if args.adversary:   # the VQGAN+CLIP loop's own pictures as negatives (LoopChains)
        loop_vqgan = (vqgan if args.adversary_vqgan == args.vqgan else
                      from_pretrained(args.adversary_vqgan).eval().requires_grad_(False).to(accelerator.device))
        chains = LoopChains(loop_vqgan, args.adversary, args.adversary_iterations, args.adversary_lr,
                            args.adversary_cutn, args.adversary_augment, args.seed, accelerator.device,
                            args.adversary_noise)

    def show(pixels):
        """What CLIP is shown of rendered pixels: VQGAN reconstructions, cutout jitter, mild noise (on the
        training device; every draw from `gen`, on the CPU, so a run is the same wherever it runs)."""
        pixels = pixels.to(accelerator.device)
        if vqgan is not None:  # half the images as the VQGAN draws them: all VQGAN+CLIP ever shows CLIP
            with torch.no_grad():
                half = len(pixels) // 2
                pixels[:half] = vqgan(pixels[:half] * 2 - 1)[0].clamp(-1, 1).add(1).div(2)
        if augment is not None:  # the jitter of the cutouts (--augment's codes), one draw per image
            with torch.no_grad():
                pixels = augment.augment_batch(pixels, gen)
        return add_noise(pixels, 0.05, gen)   # mild noise, like the cutouts of VQGAN+CLIP see

    skipped = 0
    stop = min(args.stop_at or args.steps, args.steps)   # --stop-at: export there, on the schedule of --steps
    batches = common.step_batches(functools.partial(draw_batch, args.seed, args.batch, args.hard_negatives,
                                                    args.fragments, kinds),
                                  start, stop, args.workers)
    began, done = time.monotonic(), start
    for step, (imgs, captions, negatives, shape_neg, has_object, shape_imgs) in zip(range(start, stop), batches):
        raw.train()
        common.set_lr(opt, step, args)
        A = 0
        if chains is not None:   # rows of loop captions with their renders; the loop's pictures come last
            chains.advance(raw, args.adversary_advance)
            adv_captions, adv_renders, adv_pictures = chains.sample(args.adversary_batch, args.adversary_min_age)
            A = len(adv_captions)
            captions, imgs = captions + adv_captions, np.concatenate([imgs, adv_renders])
            shape_neg, has_object = shape_neg + [None] * A, has_object + [False] * A
        pixels = show(to_pixels(imgs))
        B = len(captions)
        n_changed = 0 if shape_imgs is None else len(shape_imgs)
        if shape_imgs is not None:
            pixels = torch.cat([pixels, show(to_pixels(shape_imgs))])
        if A:
            pixels = torch.cat([pixels, show(adv_pictures)])
        # 3. symmetric InfoNCE over the batch with the extra negatives
        scale = raw.model.logit_scale.exp().clamp(max=100)
        img = F.normalize(raw.encode_image(pixels.to(accelerator.device)), dim=-1)
        txt = F.normalize(raw.encode_text(captions + negatives + [c for c in shape_neg if c]), dim=-1)
        logits = scale * img[:B] @ txt[:B + len(negatives)].t()  # (B, B + negatives)
        i2t, t2i = logits, logits[:, :B].t()
        if kinds:
            rows = torch.tensor(has_object, device=img.device)
            own_txt = img.new_full((B,), -1e4)  # masked (finite: a soft target of 0 times -inf is NaN)
            own_img = img.new_full((B,), -1e4)
            own_txt[rows] = scale * (img[:B][rows] * txt[B + len(negatives):]).sum(-1)
            own_img[rows] = scale * (txt[:B][rows] * img[B:B + n_changed]).sum(-1)
            i2t, t2i = torch.cat([i2t, own_txt[:, None]], 1), torch.cat([t2i, own_img[:, None]], 1)
        if A:   # every caption must prefer its picture to every loop picture of the batch
            t2i = torch.cat([t2i, scale * txt[:B] @ img[B + n_changed:].t()], 1)
        # identical captions in one batch are true matches too: spread the target over them
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32, device=img.device)
        target = same / same.sum(1, keepdim=True)
        pad = lambda t, n: torch.cat([t, t.new_zeros(B, n)], dim=1)
        loss = (F.cross_entropy(i2t, pad(target, i2t.shape[1] - B)) + F.cross_entropy(t2i, pad(target, t2i.shape[1] - B))) / 2
        if heads is not None:   # each stated attribute, read linearly from the embedding of its picture
            shown = captions + [c for c in shape_neg if c]
            attr = heads(img[:B + n_changed], attribute_labels(shown).to(img.device))
            loss = loss + args.attribute_loss * attr
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), float("inf"))  # measures, clips nothing
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            # one bad batch must not poison the weights (a run went NaN between steps 850 and 900)
            skipped += 1
            log.warning("step %d: loss %s, gradient norm %s: step skipped (%d so far)", step + 1, loss.item(),
                        grad_norm.item(), skipped)
            continue
        opt.step()
        if (step + 1) % args.log_every == 0:
            acc = (logits[:, :len(captions)].argmax(1).cpu() == torch.arange(len(logits))).float().mean()
            metrics.write(step + 1, loss=loss.item(), batch_acc=acc.item(), scale=raw.model.logit_scale.exp().item(),
                          lr=opt.param_groups[0]["lr"], **(chains.judged() if chains is not None else {}))
        if args.sample_every > 0 and (step + 1) % args.sample_every == 0:
            metrics.write(step + 1, **evaluate(raw, rounds=1))
        done = step + 1
        late = common.out_of_time(args, began)
        if done % args.ckpt_every == 0 or done == stop or late:
            common.save_checkpoint(run_dir, done, raw, opt, {"heads": heads.state_dict()} if heads is not None else None)
        if late:
            log.info("--minutes %g reached: stopping after step %d of %d", args.minutes, done, args.steps)
            break

    raw.eval().to("cpu")   # the scores below read CPU tensors
    save_clip(raw, args.out, float16=args.float16)
    result = evaluate(raw)
    common.write_record(Path(args.out), args, result, parameters=sum(p.numel() for p in raw.parameters()),
                        steps_done=done)
    log.info("final: %s", json.dumps(result))


def changes(args) -> tuple[str, ...]:
    """The kinds of one-change negatives asked for (--negatives; --shape-negatives is --negatives shape)."""
    kinds = tuple(k for k in (args.negatives or "").split(",") if k)
    return kinds or (("shape",) if args.shape_negatives else ())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    common.add_minutes_arg(p)
    p.add_argument("--init", help="fine-tune this exported CLIP folder instead of starting from scratch")
    p.add_argument("--vqgan", help="a VQGAN folder: half of each batch is shown as this VQGAN reconstructs it")
    p.add_argument("--augment", nargs="?", const="Af,Pe", default="", metavar="CODES",
                   help="the VQGAN+CLIP cutouts' augmentations, one draw per image (alone: Af,Pe, affine + perspective "
                        "jitter; the shapes preset's loop uses Af)")
    p.add_argument("--hard-negatives", action="store_true", help="colour-swapped captions as extra negatives")
    p.add_argument("--shape-negatives", action="store_true",
                   help="each caption with one shape changed, and a picture of it, as extra negatives")
    p.add_argument("--negatives", default="", help="one-change negatives: each caption with one stated part changed "
                   f"(a comma list of {', '.join(CHANGES)}), and a picture of it, as extra negatives")
    p.add_argument("--tower", choices=["conv", "factored"], default=None,
                   help="a new CLIP: a convolutional image tower in place of the ViT (pipelines.models.clip: conv, ConvTower; factored, FactoredTower, a colour-blind shape path plus a colour path)")
    p.add_argument("--text-from", help="a new image tower (--tower, --layers) against this exported CLIP's text "
                   "tower, text projection and tokenizer, all trained on")
    p.add_argument("--attribute-loss", type=float, default=0.0, help="weight of an extra loss: linear heads (not "
                   "exported) read each stated attribute (shapes, colours, size, position, relation, background) "
                   "from the unit-norm image embedding")
    p.add_argument("--adversary", type=int, default=0, metavar="N", help="N VQGAN+CLIP loops run against the CLIP "
                   "as it trains (LoopChains); their pictures are negatives for their captions and the batch's")
    p.add_argument("--adversary-vqgan", default="presets/weights/shapes-vqgan", help="the loops' VQGAN")
    loop = load_preset("shapes").defaults["vqgan_clip"]   # the loops run as the built-in preset's (one start)
    p.add_argument("--adversary-iterations", type=int, default=loop["iterations"], help="a loop's length (the built-in preset's: %(default)s)")
    p.add_argument("--adversary-lr", type=float, default=loop["lr"], help="the loops' learning rate (the built-in preset's: %(default)s)")
    p.add_argument("--adversary-cutn", type=int, default=loop["cutn"], help="the loops' cutouts (the built-in preset's: %(default)s)")
    p.add_argument("--adversary-augment", default=",".join(loop["augments"]), help="the loops' augmentations (the built-in preset's: %(default)s)")
    p.add_argument("--adversary-noise", type=float, default=loop.get("cut_noise", 0.1), help="the loops' cutout noise "
                   "(the built-in preset's: %(default)s; GPU round 1 ran 0.1)")
    p.add_argument("--adversary-advance", type=int, default=2, help="loop iterations per training step")
    p.add_argument("--adversary-batch", type=int, default=64, help="loop pictures (and their captions) per step")
    p.add_argument("--adversary-min-age", type=int, default=20, help="only pictures at least this many iterations old")
    p.add_argument("--fragments", type=float, default=0.0, help="share of captions replaced by one of their parts")
    p.add_argument("--width", type=int, default=128, help="from scratch: both towers' width and the embedding's length")
    p.add_argument("--layers", type=int, default=4, help="from scratch: both towers' depth")
    p.add_argument("--float16", action="store_true", help="export the weights in float16 (half the size; "
                   "loaded back as float32): a CLIP over 2.5M parameters stays under 10 MB")
    p.add_argument("--stop-at", type=int, default=0, help="stop and export after this step, the learning-rate "
                   "schedule still that of --steps (a first stage that a second, --init, continues)")
    p.add_argument("--eval-only", action="store_true", help="score the folder given by --out and exit")
    args = common.parse(p, "lab.train.clip", argv)
    if args.init and ((args.width, args.layers) != (128, 4) or args.tower or args.text_from):
        p.error("--width, --layers, --tower and --text-from build a new CLIP; --init keeps the exported one as it is")
    bad = set(k for k in args.negatives.split(",") if k) - set(CHANGES)
    if bad:
        p.error(f"--negatives: unknown kinds {sorted(bad)}; known: {', '.join(CHANGES)}")
    if args.eval_only:
        torch.set_num_threads(args.threads)
        print(json.dumps(evaluate(load_clip(args.out)), indent=2))
        return
    train(args)


if __name__ == "__main__":
    main()
