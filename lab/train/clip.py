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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import shapes
from pipelines.models.clip import CLIP, load_clip, save_clip
from pipelines.models.vqgan_files import from_pretrained
from pipelines.vqgan_clip_cutouts import MakeCutouts
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


def build_clip(tokenizer, width: int = 128, layers: int = 4) -> CLIP:
    """Both towers `width` wide and `layers` deep (32-wide heads), embeddings `width` long: the
    built-in CLIP is 128 x 4 (1.7M parameters)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    heads = max(1, width // 32)
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=32,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    # 32 px images in 4x4 patches: 64 patch tokens + CLS
    vision = CLIPVisionConfig(image_size=SIZE, patch_size=4, hidden_size=width, intermediate_size=4 * width,
                              num_hidden_layers=layers, num_attention_heads=heads)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=width)
    return CLIP(CLIPModel(config), tokenizer)


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
    return out


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


def swap_shape(caption: str, rng: np.random.Generator) -> str:
    """The same caption with one object's shape changed to another (never to a held-out colour+shape
    pair): a caption only the shape tells apart from the original."""
    scene = shapes.parse_caption(caption)
    objs = list(scene.objects)
    k = int(rng.integers(len(objs)))
    choices = [s for s in shapes.SHAPES if s != objs[k].shape and (objs[k].color, s) not in shapes.HELD_OUT]
    objs[k] = shapes.ObjectSpec(objs[k].color, choices[int(rng.integers(len(choices)))], objs[k].size)
    return shapes.Scene(tuple(objs), scene.position, scene.relation, scene.background).caption()


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


def draw_batch(seed: int, n: int, hard_negatives: bool, fragments: float, shape_negatives: bool, step: int):
    """One step's data, from the step alone (so --workers can render it ahead): the scenes (uint8) and
    their captions, colour-swapped negative captions, and the shape negatives with their pictures.

    1. Colour-swapped captions are extra negatives for every image; some captions are cut to one part.
    2. Shape negatives: each caption with one shape changed, and a picture of that changed caption.
       Each is a negative for its own row alone (it may well fit another caption of the batch). Parts
       without an object ("at the top") have none (None; has_object False): their column is masked.
    """
    imgs, captions = shapes.sample_batch(n, SIZE, common.batch_rng(seed, step))
    rng = common.batch_rng(seed + 1, step)
    negatives = [c for c in (swap_colours(c, rng) for c in captions) if c and c not in captions] if hard_negatives else []
    if fragments:
        captions = [fragment(c, rng) if rng.random() < fragments else c for c in captions]
        negatives = [c for c in negatives if c not in captions]
    shape_neg, has_object, shape_imgs = [], [], None
    if shape_negatives:
        srng = common.batch_rng(seed + 2, step)
        for c in captions:
            has_object.append(c.startswith("a "))  # object phrases come first and start with "a"
            shape_neg.append(swap_shape(c, srng) if has_object[-1] else None)
        if any(has_object):
            shape_imgs = np.stack([np.asarray(shapes.render(shapes.parse_caption(c), SIZE, srng))
                                   for c in shape_neg if c])
    return imgs, captions, negatives, shape_neg, has_object, shape_imgs


def train(args) -> None:
    accelerator, run_dir = common.setup(args, "clip")
    if args.init:  # fine-tune an exported CLIP (its tokenizer comes with it)
        clip = load_clip(args.init)
        clip.model.requires_grad_(True)
    else:
        clip = build_clip(train_tokenizer(seed=args.seed), args.width, args.layers)
    tokenizer = clip.tokenizer
    log.info("CLIP with %d parameters, vocabulary %d", sum(p.numel() for p in clip.parameters()), len(tokenizer))
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in clip.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    clip, opt, raw, start, _, metrics = common.start(args, accelerator, run_dir, clip, opt)
    gen = torch.Generator().manual_seed(args.seed)
    vqgan = from_pretrained(args.vqgan).eval().requires_grad_(False) if args.vqgan else None
    augment = MakeCutouts(SIZE, 1, method="latest", augments=("Af", "Pe"), noise_fac=0.0) if args.augment else None

    def show(pixels):
        """What CLIP is shown of rendered pixels: VQGAN reconstructions, cutout jitter, mild noise."""
        if vqgan is not None:  # half the images as the VQGAN draws them: all VQGAN+CLIP ever shows CLIP
            with torch.no_grad():
                half = len(pixels) // 2
                pixels[:half] = vqgan(pixels[:half] * 2 - 1)[0].clamp(-1, 1).add(1).div(2)
        if augment is not None:  # the affine and perspective jitter of the cutouts, one draw per image
            with torch.no_grad():
                pixels = augment.augment_batch(pixels, gen)
        # mild noise, like the cutouts of VQGAN+CLIP see
        return pixels + torch.rand(len(pixels), 1, 1, 1, generator=gen) * 0.05 * torch.randn(pixels.shape, generator=gen)

    skipped = 0
    batches = common.step_batches(functools.partial(draw_batch, args.seed, args.batch, args.hard_negatives,
                                                    args.fragments, args.shape_negatives),
                                  start, args.steps, args.workers)
    for step, (imgs, captions, negatives, shape_neg, has_object, shape_imgs) in zip(range(start, args.steps), batches):
        raw.train()
        common.set_lr(opt, step, args)
        pixels = show(to_pixels(imgs))
        B = len(captions)
        if shape_imgs is not None:
            pixels = torch.cat([pixels, show(to_pixels(shape_imgs))])
        # 3. symmetric InfoNCE over the batch with the extra negatives
        scale = raw.model.logit_scale.exp().clamp(max=100)
        img = F.normalize(raw.encode_image(pixels.to(accelerator.device)), dim=-1)
        txt = F.normalize(raw.encode_text(captions + negatives + [c for c in shape_neg if c]), dim=-1)
        logits = scale * img[:B] @ txt[:B + len(negatives)].t()  # (B, B + negatives)
        i2t, t2i = logits, logits[:, :B].t()
        if args.shape_negatives:
            rows = torch.tensor(has_object, device=img.device)
            own_txt = img.new_full((B,), -1e4)  # masked (finite: a soft target of 0 times -inf is NaN)
            own_img = img.new_full((B,), -1e4)
            own_txt[rows] = scale * (img[:B][rows] * txt[B + len(negatives):]).sum(-1)
            own_img[rows] = scale * (txt[:B][rows] * img[B:]).sum(-1)
            i2t, t2i = torch.cat([i2t, own_txt[:, None]], 1), torch.cat([t2i, own_img[:, None]], 1)
        # identical captions in one batch are true matches too: spread the target over them
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32, device=img.device)
        target = same / same.sum(1, keepdim=True)
        pad = lambda t, n: torch.cat([t, t.new_zeros(B, n)], dim=1)
        loss = (F.cross_entropy(i2t, pad(target, i2t.shape[1] - B)) + F.cross_entropy(t2i, pad(target, t2i.shape[1] - B))) / 2
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
                          lr=opt.param_groups[0]["lr"])
        if args.sample_every > 0 and (step + 1) % args.sample_every == 0:
            metrics.write(step + 1, **evaluate(raw, rounds=1))
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.steps:
            common.save_checkpoint(run_dir, step + 1, raw, opt)

    raw.eval()
    save_clip(raw, args.out, float16=args.float16)
    result = evaluate(raw)
    common.write_record(Path(args.out), args, result, parameters=sum(p.numel() for p in raw.parameters()))
    log.info("final: %s", json.dumps(result))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_common_args(p)
    p.add_argument("--init", help="fine-tune this exported CLIP folder instead of starting from scratch")
    p.add_argument("--vqgan", help="a VQGAN folder: half of each batch is shown as this VQGAN reconstructs it")
    p.add_argument("--augment", action="store_true", help="affine + perspective jitter as VQGAN+CLIP cutouts have")
    p.add_argument("--hard-negatives", action="store_true", help="colour-swapped captions as extra negatives")
    p.add_argument("--shape-negatives", action="store_true",
                   help="each caption with one shape changed, and a picture of it, as extra negatives")
    p.add_argument("--fragments", type=float, default=0.0, help="share of captions replaced by one of their parts")
    p.add_argument("--width", type=int, default=128, help="from scratch: both towers' width and the embedding's length")
    p.add_argument("--layers", type=int, default=4, help="from scratch: both towers' depth")
    p.add_argument("--float16", action="store_true", help="export the weights in float16 (half the size; "
                   "loaded back as float32): a CLIP over 2.5M parameters stays under 10 MB")
    p.add_argument("--eval-only", action="store_true", help="score the folder given by --out and exit")
    args = common.parse(p, "lab.train.clip", argv)
    if args.init and (args.width, args.layers) != (128, 4):
        p.error("--width and --layers size a CLIP trained from scratch; --init keeps the exported one's size")
    if args.eval_only:
        torch.set_num_threads(args.threads)
        print(json.dumps(evaluate(load_clip(args.out)), indent=2))
        return
    train(args)


if __name__ == "__main__":
    main()
