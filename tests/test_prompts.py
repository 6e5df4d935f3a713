"""Tests for pipelines.prompts: upstream split_prompt goldens, documented fixes, story parsing."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipelines.prompts import (
    PromptError,
    WeightedPrompt,
    parse_image_prompts,
    parse_noise_prompts,
    parse_prompts,
    phase_at,
    split_prompt,
)

META = json.loads((Path(__file__).parent / "fixtures" / "vqgan_clip_ops" / "meta.json").read_text())
INF = float("inf")


def _golden_cases():
    for text, result in META["split_prompt"].items():
        if isinstance(result, list):
            yield text, result


# ---------------------------------------------------------------------------------------------
# split_prompt: upstream goldens
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", list(_golden_cases()))
def test_split_prompt_matches_upstream_golden(text, expected):
    got = split_prompt(text)
    exp_text, exp_weight, exp_stop = expected
    assert got.text == exp_text  # exact, including upstream's kept spaces
    assert got.weight == float(exp_weight)
    assert got.stop == float(exp_stop)


def test_golden_covers_the_error_cases_we_changed():
    errors = {k for k, v in META["split_prompt"].items() if isinstance(v, str)}
    assert errors == {"http://x.org/a.png", "http://x.org/a.png:0.7", "trailing:"}


# ---------------------------------------------------------------------------------------------
# split_prompt: documented deviations
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("http://x.org/a.png", WeightedPrompt("http://x.org/a.png")),
        ("http://x.org/a.png:0.7", WeightedPrompt("http://x.org/a.png", 0.7)),
        ("https://x.org/a.png:2:0.5", WeightedPrompt("https://x.org/a.png", 2.0, 0.5)),
        ("http://x.org:8080/a.png:0.7", WeightedPrompt("http://x.org:8080/a.png", 0.7)),
        ("http://x.org:8080/a.png", WeightedPrompt("http://x.org:8080/a.png")),
        ("C:\\img\\style.png", WeightedPrompt("C:\\img\\style.png")),
        ("C:\\img\\style.png:-0.5", WeightedPrompt("C:\\img\\style.png", -0.5)),
        ("D:/pics/a.jpg:1:-inf", WeightedPrompt("D:/pics/a.jpg", 1.0, -INF)),
    ],
)
def test_split_prompt_keeps_urls_and_drive_paths(text, expected):
    assert split_prompt(text) == expected


def test_split_prompt_upstream_quirks_kept():
    assert split_prompt("time 12:30") == WeightedPrompt("time 12", 30.0)
    assert split_prompt("cat: 0.5") == WeightedPrompt("cat", 0.5)
    assert split_prompt("a:b:2:0.3") == WeightedPrompt("a:b", 2.0, 0.3)
    assert split_prompt("fog:1:-inf").stop == -INF
    assert split_prompt(":0.5") == WeightedPrompt("", 0.5)


@pytest.mark.parametrize(
    "text,words",
    [
        ("trailing:", ["trailing:", "nothing after"]),
        ("a:b", ["'a:b'", "weight 'b'", "not a number", "desert:0.5"]),
        ("a cat:2:x", ["stop", "'x'", "not a number"]),
        ("a cat:2:", ["nothing after"]),
        ("a cat:nan", ["weight", "nan"]),
        ("a cat:inf", ["weight", "inf"]),
        ("a cat:-inf", ["weight"]),
        ("a cat:1:nan", ["stop", "-inf"]),
        ("a cat:1:inf", ["stop", "-inf"]),
        ("ratio 16:9 landscape", ["'9 landscape'", "not a number"]),
    ],
)
def test_split_prompt_errors_are_friendly(text, words):
    with pytest.raises(PromptError) as info:
        split_prompt(text)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value)


def test_weighted_prompt_is_frozen_with_defaults():
    p = WeightedPrompt("x")
    assert (p.weight, p.stop) == (1.0, -INF)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.text = "y"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# parse_prompts
# ---------------------------------------------------------------------------------------------
def test_parse_prompts_story_phases_and_pipes():
    phases = parse_prompts(" a forest | fog:0.5 ^ a city:-1:-1.5|rain ^night")
    assert phases == [
        [WeightedPrompt("a forest"), WeightedPrompt("fog", 0.5)],
        [WeightedPrompt("a city", -1.0, -1.5), WeightedPrompt("rain")],
        [WeightedPrompt("night")],
    ]


def test_parse_prompts_strips_text_but_split_prompt_does_not():
    assert parse_prompts(" spaced :1.5") == [[WeightedPrompt("spaced", 1.5)]]
    assert split_prompt(" spaced :1.5").text == " spaced "


def test_parse_prompts_single_negative_weight_is_allowed():
    assert parse_prompts("blurry:-1") == [[WeightedPrompt("blurry", -1.0)]]


@pytest.mark.parametrize(
    "text,words",
    [
        ("", ["Enter a prompt"]),
        ("   \n ", ["Enter a prompt"]),
        ("a||b", ["Prompt 2", "empty"]),
        ("a|b|", ["Prompt 3", "empty"]),
        ("|a", ["Prompt 1", "empty"]),
        ("a^^b", ["phase 2", "empty"]),
        ("a^", ["phase 2", "empty"]),
        ("a^b|c| ", ["Prompt 3", "story phase 2"]),
        ("a:0|b:0", ["all weights are zero"]),
        ("a ^ b:0", ["story phase 2", "all weights are zero"]),
        (" :0.5|b", ["no text"]),
        ("a:b", ["not a number"]),
    ],
)
def test_parse_prompts_errors(text, words):
    with pytest.raises(PromptError) as info:
        parse_prompts(text)
    for word in words:
        assert word in str(info.value)


def test_parse_prompts_length_limit():
    assert parse_prompts("x" * 20, max_chars=20) == [[WeightedPrompt("x" * 20)]]
    with pytest.raises(PromptError, match="limit is 20"):
        parse_prompts("x" * 21, max_chars=20)
    with pytest.raises(PromptError, match="2001 characters"):
        parse_prompts("y" * 2001)


# ---------------------------------------------------------------------------------------------
# image and noise prompts
# ---------------------------------------------------------------------------------------------
def test_parse_image_prompts():
    assert parse_image_prompts("") == []
    assert parse_image_prompts("   ") == []
    assert parse_image_prompts(" a.png | dir/b.jpg:0.5:0.1 |http://x.org/c.png:2") == [
        WeightedPrompt("a.png"),
        WeightedPrompt("dir/b.jpg", 0.5, 0.1),
        WeightedPrompt("http://x.org/c.png", 2.0),
    ]


@pytest.mark.parametrize(
    "text,words",
    [("a.png||b.png", ["Image prompt 2", "empty"]), (":0.5", ["no file name"]), ("a.png:x", ["not a number"])],
)
def test_parse_image_prompts_errors(text, words):
    with pytest.raises(PromptError) as info:
        parse_image_prompts(text)
    for word in words:
        assert word in str(info.value)


def test_parse_noise_prompts():
    assert parse_noise_prompts("", "") == []
    assert parse_noise_prompts("1, 2 3", "0.5,-0.5  1") == [(1, 0.5), (2, -0.5), (3, 1.0)]


@pytest.mark.parametrize(
    "seeds,weights,words",
    [
        ("1,2", "0.5", ["2 noise seed", "1 noise weight", "one weight per seed"]),
        ("1", "", ["one weight per seed"]),
        ("x", "1", ["'x'", "whole number"]),
        ("1.5", "1", ["whole number"]),
        ("-1", "1", ["out of range"]),
        ("1", "abc", ["'abc'", "not a number"]),
        ("1", "nan", ["not a number"]),
    ],
)
def test_parse_noise_prompts_errors(seeds, weights, words):
    with pytest.raises(PromptError) as info:
        parse_noise_prompts(seeds, weights)
    for word in words:
        assert word in str(info.value)


# ---------------------------------------------------------------------------------------------
# phase_at
# ---------------------------------------------------------------------------------------------
def test_phase_at_cycles_like_upstream():
    phases = [["a"], ["b"], ["c"]]
    # Upstream: at every i > 0 with i % N == 0 the next phrase (cycling) takes over.
    expected, current = [], 0
    for i in range(20):
        if i > 0 and i % 4 == 0:
            current = (current + 1) % len(phases)
        expected.append(current)
    assert [phase_at(phases, i, 4) for i in range(20)] == expected
    assert [phase_at(phases, i, 4) for i in (0, 3, 4, 8, 11, 12)] == [0, 0, 1, 2, 2, 0]


def test_phase_at_story_mode_off_and_errors():
    assert all(phase_at([[1], [2]], i, 0) == 0 for i in range(10))
    assert phase_at([[1], [2]], 7, -3) == 0
    assert phase_at([[1]], 1000, 1) == 0
    with pytest.raises(ValueError):
        phase_at([], 0, 1)
    with pytest.raises(ValueError):
        phase_at([[1]], -1, 1)
