"""The training commands run, resume, and export weights the app's loaders read (tiny step counts)."""
import math
import json
import os

import pytest
import torch

from pipelines.models.clip import load_clip
from pipelines.models.vqgan_files import from_pretrained
from shapes import SHAPES
from lab.train import clip as train_clip
from lab.train import vqgan as train_vqgan


def test_vqgan_trains_resumes_and_exports(tmp_path):
    out, run = tmp_path / "vq", tmp_path / "run"
    common = ["--out", str(out), "--run-dir", str(run), "--batch", "4", "--log-every", "1", "--sample-every", "2",
              "--ckpt-every", "1", "--eval-scenes", "16"]
    train_vqgan.main(common + ["--steps", "2"])
    first = torch.load(run / "checkpoint.pt", weights_only=True)
    assert first["step"] == 2 and (run / "samples_000002.png").exists()
    train_vqgan.main(common + ["--steps", "3", "--resume", "--sample-every", "0"])   # 0: no samples while training
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]  # the resumed run continued at step 3
    rec = json.loads((out / "train.json").read_text())
    assert "lab.train.vqgan" in rec["command"] and rec["seed"] == 0
    assert {"psnr_db", "codebook_used", "small_shape_mask_iou"} <= set(rec["metrics"])
    model = from_pretrained(out)
    x, _, idx = model(torch.zeros(1, 3, 32, 32))
    assert x.shape == (1, 3, 32, 32) and idx.shape == (64,)


def test_vqgan_decoder_only_finetune_keeps_every_code(tmp_path):
    """--decoder-from trains the decoder alone: the encoder and codebook (what other models learnt) stay put."""
    src = "presets/weights/shapes-vqgan"
    out, run = tmp_path / "dec", tmp_path / "run"
    train_vqgan.main(["--decoder-from", src, "--out", str(out), "--run-dir", str(run), "--batch", "4", "--steps", "2",
                      "--lr", "1e-2", "--object-weight", "2", "--hard-share", "0.5", "--hard-shapes", "star:1,cross:1",
                      "--log-every", "1", "--sample-every", "2", "--eval-scenes", "16"])
    before, after = from_pretrained(src).state_dict(), from_pretrained(out).state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same == (not k.startswith(("decoder.", "post_quant_conv."))), k
    rec = json.loads((out / "train.json").read_text())
    assert 0 <= rec["metrics"]["judge_correct"] <= 1
    assert set(rec["metrics"]["small_shape_judged"]) == set(SHAPES)
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("judge_correct" in r and "small_star" in r for r in logged)  # the judge's view while training


def test_hard_scenes_draw_the_shapes_asked_for():
    import numpy as np
    import pytest

    from lab.eval.judge import analyse

    assert train_vqgan.shape_weights("star:6, cross:4") == {**dict.fromkeys(SHAPES, 0.0), "star": 6.0, "cross": 4.0}
    for bad in ("stars:1", "star:0", "star:x"):
        with pytest.raises(ValueError):
            train_vqgan.shape_weights(bad)
    batch = train_vqgan.hard_batch(24, np.random.default_rng(0), train_vqgan.shape_weights("star:1"))
    assert batch.shape == (24, 32, 32, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch, train_vqgan.hard_batch(24, np.random.default_rng(0), train_vqgan.shape_weights("star:1")))
    found = [o.shape for img in batch for o in analyse(img).objects]
    assert len(found) >= 24 and found.count("star") / len(found) > 0.9


def test_clip_tokenizer_covers_every_character():
    tok = train_clip.train_tokenizer(n_captions=300)
    ids = tok("a Zebra!? riding 42 ☃")["input_ids"]
    assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id  # nothing unknown maps to <|endoftext|>
    assert tok.convert_ids_to_tokens(tok("a red circle")["input_ids"]) == [
        "<|startoftext|>", "a</w>", "red</w>", "circle</w>", "<|endoftext|>"]


def test_tokenizer_ids_are_the_same_in_every_process():
    """The BPE trainer and the byte alphabet are hash-ordered; the ids must not be (a resumed DALL-E run
    once read the word "a" with another id than its first run)."""
    import subprocess
    import sys

    code = ("import json; from lab.train.clip import train_tokenizer; "
            "print(json.dumps(train_tokenizer(n_captions=300).get_vocab(), sort_keys=True))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.splitlines()[-1] for seed in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]


def test_clip_trains_and_exports_a_hub_style_folder(tmp_path):
    out = tmp_path / "clip"
    train_clip.main(["--out", str(out), "--run-dir", str(tmp_path / "run"), "--steps", "2", "--batch", "8",
                     "--log-every", "1", "--sample-every", "0"])   # 0: no samples while training
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "train.json"} <= {
        p.name for p in out.iterdir()}
    clip = load_clip(out)
    assert clip.encode_text(["a red circle"]).shape == (1, 128)
    assert clip.encode_image(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    assert set(json.loads((out / "train.json").read_text())["metrics"]) == {
        "r1_seen_full", "r1_heldout_full", "r1_seen_stream", "binding_acc", "shape_acc", "probe_shape", "probe_position",
        "colour_pick_heldout", "colour_pick_seen", "colour_caption_pick_heldout", "colour_caption_pick_seen"}


def test_colour_pick_scores_a_clip_that_sees_colour_and_one_that_does_not():
    """colour_pick: a CLIP that embeds the object's colour (a one-hot of the nearest palette colour of the pixels
    unlike the corner's) wins every time, both ways, held-out pairs too; a colour-blind one never does."""
    import numpy as np

    import shapes
    from lab.train.clip import colour_pick

    names = list(shapes.PALETTE)
    rgb = torch.tensor([shapes.PALETTE[c] for c in names], dtype=torch.float32) / 255

    class Sighted:
        def encode_image(self, x):
            out = torch.zeros(len(x), len(names))
            for k, img in enumerate(x):
                px = img.flatten(1).t()                                # (pixels, 3)
                obj = px[(px - img[:, 0, 0]).abs().sum(1) > 0.3]      # the object: unlike the corner
                out[k, torch.cdist(obj, rgb).argmin(1).mode().values] = 1
            return out

        def encode_text(self, captions):
            out = torch.zeros(len(captions), len(names))
            for k, c in enumerate(captions):
                out[k, names.index(shapes.parse_caption(c).objects[0].color)] = 1
            return out

    class Blind(Sighted):
        def encode_image(self, x):
            return torch.ones(len(x), len(names))

    for held in (True, False):
        assert colour_pick(Sighted(), held, np.random.default_rng(0), n=12) == (1.0, 1.0)
        assert colour_pick(Blind(), held, np.random.default_rng(0), n=12)[0] == 0.0


def test_shape_swapped_captions_differ_in_one_shape_only_and_stay_seen_pairs():
    import numpy as np

    import shapes

    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = shapes.random_scene(rng)
        swapped = shapes.parse_caption(train_clip.swap_shape(scene.caption(), rng))
        changed = [(a, b) for a, b in zip(scene.objects, swapped.objects) if a != b]
        assert len(changed) == 1
        (a, b), = changed
        assert a.color == b.color and a.size == b.size and a.shape != b.shape
        assert (b.color, b.shape) not in shapes.HELD_OUT
        assert (swapped.position, swapped.relation, swapped.background) == (scene.position, scene.relation,
                                                                              scene.background)


def test_one_change_negatives_change_one_stated_part_of_the_asked_kinds():
    import numpy as np

    import shapes

    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(600):
        scene = shapes.random_scene(rng)
        kinds = train_clip.CHANGES if rng.random() < 0.7 else ("size", "position")
        out = train_clip.swap_one(scene.caption(), rng, kinds)
        if out is None:   # nothing of those kinds is stated: no size, no position
            assert kinds == ("size", "position") and scene.position is None and all(o.size is None for o in scene.objects)
            continue
        new = shapes.parse_caption(out)
        diff = [k for k in ("position", "relation", "background") if getattr(scene, k) != getattr(new, k)]
        for a, b in zip(scene.objects, new.objects):
            diff += [k for k, x, y in (("shape", a.shape, b.shape), ("colour", a.color, b.color), ("size", a.size, b.size))
                     if x != y]
            assert (b.color, b.shape) not in shapes.HELD_OUT
        assert len(diff) == 1 and diff[0] in kinds, (scene.caption(), out)
        seen.add(diff[0])
    assert seen == set(train_clip.CHANGES)


def test_attribute_labels_are_what_each_caption_states():
    labels = train_clip.attribute_labels(["a small red circle at the top on a blue background",
                                          "a green star above a large white cross", "at the top", "on a blue background"])
    names = list(train_clip.ATTRIBUTES)
    row = lambda i: {n: int(v) for n, v in zip(names, labels[i]) if v != -100}
    assert row(0) == {"shape": 0, "colour": 0, "size": 0, "position": 3, "background": 4}
    assert row(1) == {"shape": 4, "colour": 3, "relation": 2, "shape 2": 5, "colour 2": 6}
    assert row(2) == {"position": 3} and row(3) == {"background": 4}


@pytest.mark.parametrize("tower", ["conv", "factored"])
def test_a_conv_tower_clip_against_an_exported_text_tower(tmp_path, tower):
    """--tower conv (or factored) --text-from: a new convolutional image tower against an exported CLIP's text
    tower; it exports as a CLIPModel folder that load_clip rebuilds, and the fast image pass (and its bfloat16
    twin) agrees with transformers' own."""
    donor = tmp_path / "donor"
    train_clip.main(["--out", str(donor), "--run-dir", str(tmp_path / "run0"), "--steps", "1", "--batch", "4",
                     "--width", "64", "--layers", "1", "--log-every", "1", "--sample-every", "0"])
    out = tmp_path / "conv"
    train_clip.main(["--out", str(out), "--run-dir", str(tmp_path / "run1"), "--steps", "2", "--batch", "8",
                     "--text-from", str(donor), "--tower", tower, "--lr", "0",
                     "--negatives", ",".join(train_clip.CHANGES), "--hard-negatives", "--fragments", "0.3",
                     "--log-every", "1", "--sample-every", "0"])
    from pipelines.models.clip import TOWERS, _image_features

    a, b = load_clip(donor), load_clip(out)
    assert type(b.model.vision_model) is TOWERS[tower]
    assert b.model.config.vision_config.tower == tower and b.embed_dim == 64
    assert not any(k.startswith("vision_model.encoder") for k in b.model.state_dict())   # no ViT left inside
    with torch.no_grad():   # lr 0: the text tower is the donor's
        assert torch.equal(a.encode_text(["a red circle at the top"]), b.encode_text(["a red circle at the top"]))
        x = torch.rand(3, 3, 32, 32)
        ref = b.model.get_image_features(pixel_values=(x - b.mean) / b.std).pooler_output
        assert torch.allclose(b.encode_image(x), ref, atol=1e-5)
        assert torch.allclose(_image_features(b.model, (x - b.mean) / b.std), ref, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.nn.functional.cosine_similarity(b.encode_image(x), ref).min() > 0.98
    x.requires_grad_(True)
    b.encode_image(x).sum().backward()   # VQGAN+CLIP's gradient reaches the pixels through the stem
    assert x.grad.abs().sum() > 0
    with pytest.raises(SystemExit):
        train_clip.main(["--out", str(tmp_path / "x"), "--init", str(out), "--tower", "conv"])
    with pytest.raises(SystemExit):
        train_clip.main(["--out", str(tmp_path / "x"), "--negatives", "shape,mood"])


def test_the_factored_towers_shape_path_is_colour_blind():
    """FactoredTower: the shape path sees the same input for a triangle in any colour that stands out from the
    background (so what it learns of triangles holds for a colour never seen with one), but not for another shape;
    the colour path sees no edges (a recoloured object moves only the colour part); the embedding is the two
    parts' sum."""
    from transformers import CLIPVisionConfig

    import numpy as np

    import shapes
    from pipelines.models.clip import CLIP_MEAN, CLIP_STD, FactoredTower

    tower = FactoredTower(CLIPVisionConfig(image_size=32, hidden_size=16, num_attention_heads=4, num_channels=3)).eval()
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def picture(colour, shape, background="yellow"):
        scene = shapes.Scene((shapes.ObjectSpec(colour, shape, "large"),), position="at the top", background=background)
        return (train_clip.to_pixels(np.asarray(shapes.render(scene, 32, seed=3))[None]) - mean) / std

    green, orange, square = picture("green", "triangle"), picture("orange", "triangle"), picture("green", "square")
    assert (green - orange).abs().mean() > (green - square).abs().mean()   # in pixels, the colour changes more
    with torch.no_grad():
        # only the anti-aliased edge pixels, part object and part background, still tell low contrast from high
        same = (tower.shape_input(green) - tower.shape_input(orange)).abs().mean()
        other = (tower.shape_input(green) - tower.shape_input(square)).abs().mean()
        assert same < other / 4
        shape_part, colour_part = tower.shape_part, tower.colour_part
        assert torch.allclose(tower(green).pooler_output, shape_part(green) + colour_part(green), atol=1e-5)
        assert (shape_part(green) - shape_part(orange)).norm() < (shape_part(green) - shape_part(square)).norm() / 2


def test_clip_trains_with_shape_negatives(tmp_path):
    """Each caption's shape-swapped caption and picture join the loss (fragments without an object have none),
    with the attribute heads' loss and the affine jitter alone; --stop-at ends (and exports) early."""
    out = tmp_path / "clip"
    train_clip.main(["--out", str(out), "--run-dir", str(tmp_path / "run"), "--steps", "5", "--stop-at", "2", "--batch", "8",
                     "--shape-negatives", "--fragments", "0.5", "--hard-negatives", "--log-every", "1",
                     "--sample-every", "100", "--attribute-loss", "1", "--augment", "Af"])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_worker_processes_draw_the_same_batches_in_the_same_order():
    """--workers renders ahead in other processes; the data of every step must not change with it."""
    import functools

    import numpy as np

    from lab.train import common
    from lab.train import dalle as train_dalle
    from lab.train import diffusion as train_diffusion
    from lab.train import unclip as train_unclip

    for make in (functools.partial(train_diffusion.draw_batch, 3, 4, 0.5),
                 functools.partial(train_dalle.draw_batch, 3, 4, 0.5),
                 functools.partial(train_unclip.draw_batch, 3, 4, True, 0.5)):
        inline = list(common.step_batches(make, 5, 12, workers=0))
        ahead = list(common.step_batches(make, 5, 12, workers=3))
        assert len(inline) == len(ahead) == 7
        for step, (a, b) in enumerate(zip(inline, ahead), start=5):
            assert np.array_equal(a[0], b[0]) and a[1] == b[1], step
            assert np.array_equal(a[0], make(step)[0])       # step k's batch, not another step's
        assert not np.array_equal(inline[0][0], inline[1][0])
    # the unCLIP draw hands back the step's generator, which goes on to draw the dropped conditions
    a = list(common.step_batches(functools.partial(train_unclip.draw_batch, 3, 4, True, 0.5), 0, 2, workers=2))
    b = list(common.step_batches(functools.partial(train_unclip.draw_batch, 3, 4, True, 0.5), 0, 2, workers=0))
    assert [x[2].random() for x in a] == [x[2].random() for x in b]


def test_p_optional_sets_how_often_captions_state_size_position_and_background():
    """--p-optional (diffusion and unCLIP trainers): 1 states every optional part of every caption, 0 none;
    dropped diffusion captions stay empty."""
    import shapes
    from lab.train import diffusion as train_diffusion
    from lab.train import unclip as train_unclip

    draws = {"diffusion": lambda p: train_diffusion.draw_batch(5, 64, 0.0, 0, p_optional=p)[1],
             "unclip": lambda p: train_unclip.draw_batch(5, 64, True, p, 0)[1]}
    for name, draw in draws.items():
        def stated(p):
            scenes = [shapes.parse_caption(c) for c in draw(p)]
            parts = [[o.size for o in s.objects] + [s.background] + ([s.position] if len(s.objects) == 1 else [])
                     for s in scenes]
            return sum(x is not None for ps in parts for x in ps) / sum(len(ps) for ps in parts)

        assert stated(1.0) == 1.0 and stated(0.0) == 0.0, name
        assert 0.3 < stated(0.5) < 0.7, name
    _, default = train_diffusion.draw_batch(5, 64, 0.0, 0)
    assert default == train_diffusion.draw_batch(5, 64, 0.0, 0, p_optional=0.5)[1]
    _, dropped = train_diffusion.draw_batch(5, 64, 1.0, 0, p_optional=1.0)
    assert dropped == [""] * 64
    assert train_unclip.draw_batch(5, 8, False, 1.0, 0)[:2] == (None, None)     # a cache: no fresh scenes


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_every_trainer_continues_from_an_exported_folder(tmp_path):
    """--init DIR starts from an export (architecture and weights): at learning rate 0 the export after
    one more step holds the same weights, and the new run keeps the folder's architecture."""
    from lab.train import dalle as train_dalle
    from lab.train import diffusion as train_diffusion
    from lab.train import unclip as train_unclip

    runs = [
        (train_diffusion.main, [], ["--channels", "32,32", "--stat-images", "16", "--grid-steps", "2"], []),
        (train_dalle.main, [], ["--layers", "1", "--width", "32", "--heads", "2", "--tokenizer-captions", "300",
                                "--eval-scenes", "8"], ["--tokenizer-captions", "300", "--eval-scenes", "8"]),
        (train_unclip.main, ["decoder"], ["--channels", "32,32", "--stat-images", "16", "--grid-steps", "2"],
         ["--stat-images", "16", "--grid-steps", "2"]),
        (train_unclip.main, ["prior"], ["--width", "32", "--layers", "1", "--heads", "2", "--eval-scenes", "8"],
         ["--eval-scenes", "8"]),
    ]
    for k, (main, part, sizes, rest) in enumerate(runs):
        first, again = tmp_path / f"first{k}", tmp_path / f"again{k}"
        base = [*part, "--batch", "4", "--steps", "1", "--log-every", "1", "--sample-every", "0"]
        main(base + ["--out", str(first), "--run-dir", str(tmp_path / f"run{k}"), *sizes])
        main(base + ["--out", str(again), "--run-dir", str(tmp_path / f"run{k}b"), "--init", str(first),
                     "--lr", "0", "--workers", "1", *rest])
        a, b = _weights(first), _weights(again)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a), main.__module__
        assert json.loads((again / "train.json").read_text())["command"].count("--init") == 1


def test_clip_width_depth_and_float16_export(tmp_path):
    """A wider CLIP for longer runs: both towers and the embedding take --width, the depth --layers; --float16
    stores it in half the bytes and it still loads as float32."""
    out = tmp_path / "clip"
    train_clip.main(["--out", str(out), "--run-dir", str(tmp_path / "run"), "--steps", "1", "--batch", "4",
                     "--width", "64", "--layers", "2", "--float16", "--log-every", "1", "--sample-every", "0"])
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:          # stored in half the bytes
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    clip = load_clip(out)                                                # and used in float32
    assert clip.model.dtype == torch.float32
    assert clip.encode_image(torch.rand(1, 3, 32, 32)).shape == (1, 64)
    assert clip.model.config.vision_config.num_hidden_layers == clip.model.config.text_config.num_hidden_layers == 2
    assert "--width 64" in json.loads((out / "train.json").read_text())["command"]
    with pytest.raises(SystemExit):
        train_clip.main(["--out", str(tmp_path / "x"), "--init", str(out), "--width", "256"])


def test_the_loop_adversary_runs_the_presets_loop_and_judges_finished_chains():
    """LoopChains: batched VQGAN+CLIP loops on training captions move each picture towards its caption, a chain
    that has run its iterations is judged and starts over on a new caption, and `sample` hands out
    (caption, render, loop picture) triples of the chains old enough."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    clip = load_clip("presets/weights/shapes-clip-factored").eval()
    vqgan = from_pretrained("presets/weights/shapes-vqgan").eval().requires_grad_(False)
    chains = train_clip.LoopChains(vqgan, 4, 12, 0.2, 4, "Af", seed=0, device="cpu")
    chains.age[:] = 0

    def closeness():
        with torch.no_grad():
            return (F.normalize(clip.encode_image(chains.synth(chains.z)), dim=-1) * chains.target).sum(-1)

    captions = list(chains.captions)
    chains.advance(clip, 1)
    before = closeness()
    chains.advance(clip, 10)
    assert closeness().mean() > before.mean() + 0.02       # the loop climbs towards its captions
    assert chains.judged() == {} and chains.captions == captions
    chains.advance(clip, 1)                                  # the 12th iteration: all four judged, all restarted
    judged = chains.judged()
    assert judged["loop_judged"] == 4 and 0 <= judged["loop_correct"] <= 1 and "loop_background_wrong" in judged
    assert chains.captions != captions and (chains.age == 0).all()
    chains.advance(clip, 2)
    caps, renders, pictures = chains.sample(3, min_age=2)
    assert len(caps) == 3 and renders.shape == (3, 32, 32, 3) and renders.dtype.name == "uint8"
    assert pictures.shape == (3, 3, 32, 32) and 0 <= float(pictures.min()) and float(pictures.max()) <= 1
    assert chains.sample(3, min_age=3)[0] == []              # none is that old yet


def test_clip_trains_against_the_loop_and_stops_at_its_minutes(tmp_path):
    """--adversary: the loops' pictures join the loss and their judged accuracy is logged; --minutes ends the
    run at a step's end, exports, and records where (steps_done)."""
    out, run = tmp_path / "clip", tmp_path / "run"
    small = ["--batch", "4", "--width", "64", "--layers", "1", "--tower", "conv", "--sample-every", "0"]
    train_clip.main(["--out", str(out), "--run-dir", str(run), "--steps", "3", "--log-every", "1", *small,
                     "--adversary", "3", "--adversary-iterations", "2", "--adversary-advance", "1",
                     "--adversary-batch", "2", "--adversary-min-age", "0", "--adversary-cutn", "2"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log) and sum(r.get("loop_judged", 0) for r in log) >= 3
    assert json.loads((out / "train.json").read_text())["steps_done"] == 3
    train_clip.main(["--out", str(tmp_path / "short"), "--run-dir", str(tmp_path / "run2"), "--steps", "50",
                     "--minutes", "1e-9", *small])
    record = json.loads((tmp_path / "short" / "train.json").read_text())
    assert record["steps_done"] == 1 and record["steps"] == 50
    load_clip(tmp_path / "short")


def test_the_factored_clip_gives_a_held_out_pair_its_own_colour():
    """presets/weights/shapes-clip-factored (FactoredTower): a caption of a held-out pair (a colour and a shape no
    training picture or caption put together) scores its own picture above the same scene in every other colour,
    where the conv CLIP before it is drawn to the colours it saw the shape in. This is what VQGAN+CLIP climbs: the
    "done when" prompt's green triangle must beat the orange one (the conv CLIP: 0.405 against 0.474)."""
    import numpy as np

    import shapes

    torch.manual_seed(0)
    factored = load_clip("presets/weights/shapes-clip-factored").eval()
    with torch.no_grad():
        picks, _ = train_clip.colour_pick(factored, True, np.random.default_rng(0), n=12, renders=1)
        assert picks >= 0.9
        caption = "a large green triangle at the top on a yellow background"
        text = torch.nn.functional.normalize(factored.encode_text([caption]), dim=-1)
        scores = {}
        for colour in ("green", "orange", "white", "red"):
            scene = shapes.Scene((shapes.ObjectSpec(colour, "triangle", "large"),), position="at the top",
                                 background="yellow")
            img = factored.encode_image(train_clip.to_pixels(np.asarray(shapes.render(scene, 32, seed=1))[None]))
            scores[colour] = float(torch.nn.functional.normalize(img, dim=-1) @ text.t())
    assert max(scores, key=scores.get) == "green" and scores["green"] > scores["orange"] + 0.05, scores
