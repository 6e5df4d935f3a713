"""Prompt parsing for the VQGAN+CLIP pipeline.

The syntax comes from Katherine Crowson's VQGAN+CLIP notebook as documented in
nerdyrodent/VQGAN-CLIP ``generate.py`` (see ``shared/reference/vqgan_clip.md`` section 2):

* a *story* is split on ``^`` into phases; only one phase is active at a time and, in story
  mode, the next phase (cycling) replaces the prompt list every ``change_every`` iterations;
* a phase is split on ``|`` into prompts;
* each prompt is ``text:weight:stop``, split from the RIGHT on ``:`` at most twice.
  A missing weight is 1, a missing stop is -inf.

Quirks kept from upstream (:func:`split_prompt`):

* the text part is **not** stripped (``" spaced :1.5"`` gives text ``" spaced "``);
* at most two fields are split off from the right, so ``"time 12:30:1:0.1"`` keeps
  ``"time 12:30"`` as its text, and ``"time 12:30"`` means text ``"time 12"`` with weight 30;
* a weight or stop field may have spaces around the number (``"cat: 0.5"``), as ``float()``
  allows.

Deliberate fixes (documented differences from upstream):

1. **URLs and Windows paths.** Upstream reads the ``//host/...`` of ``scheme://`` as a weight
   and fails. Here, when the text contains ``://`` or starts with a drive letter such as
   ``C:\\`` / ``C:/``, the colons up to and including that marker are never separators, and
   after it trailing ``:field`` parts are split off (from the right, at most two) **only while
   they parse as numbers**. So ``'http://x.org/a.png:0.7'`` gives text ``'http://x.org/a.png'``
   and weight 0.7, and ``'http://x.org/a.png'`` gives the whole URL with weight 1. One
   consequence: a bare port with no path, ``'http://host:8080'``, is read as weight 8080;
   include the path (``'http://host:8080/a.png'``).
2. **Friendly errors.** Where upstream raised a bare ``float()`` ``ValueError``, these functions
   raise :class:`PromptError` (a ``ValueError``) whose message names the offending piece and
   says how to fix it: a trailing ``:``, a weight or stop that is not a number, a NaN or
   infinite weight, a NaN or ``+inf`` stop. ``stop`` may be ``-inf`` (the default).
3. The user-facing :func:`parse_prompts` strips the whitespace around each prompt's text and
   rejects empty pieces, over-long input and phases whose weights are all zero; upstream passed
   such input on silently.
4. :func:`parse_noise_prompts` rejects seed/weight lists of different lengths; upstream paired
   them with ``zip`` and silently dropped the extras.

This module is pure Python (no torch).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "WeightedPrompt",
    "PromptError",
    "split_prompt",
    "parse_prompts",
    "parse_image_prompts",
    "parse_noise_prompts",
    "phase_at",
]

_EXAMPLE = "write text:weight, e.g. 'desert:0.5'"
# A URL-like scheme marker anywhere in the text, or a Windows drive at its start.
_DRIVE_RE = re.compile(r"^\s*[A-Za-z]:[\\/]")
_MAX_SEED = 2**64 - 1  # the largest value torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class WeightedPrompt:
    """One prompt: its text (or image path), its weight and its stop threshold."""

    text: str
    weight: float = 1.0
    stop: float = float("-inf")


class PromptError(ValueError):
    """A prompt the artist typed cannot be used; the message says why and how to fix it."""


def _short(text: str, limit: int = 60) -> str:
    """Shorten a piece of prompt for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_float(field: str) -> float | None:
    """``float(field)`` or None when the field is not a number."""
    try:
        return float(field)
    except ValueError:
        return None


def _check_weight(prompt: str, field: str) -> float:
    """Parse a weight field; PromptError with a helpful message when it is unusable."""
    if field.strip() == "":
        raise PromptError(
            f"Prompt '{_short(prompt)}': there is nothing after the ':' "
            f"({_EXAMPLE}, or remove the ':')"
        )
    value = _to_float(field)
    if value is None:
        raise PromptError(
            f"Prompt '{_short(prompt)}': the weight '{_short(field.strip(), 30)}' is not a number "
            f"({_EXAMPLE}; a ':' separates the text from its weight)"
        )
    if not math.isfinite(value):
        raise PromptError(
            f"Prompt '{_short(prompt)}': the weight must be an ordinary number, "
            f"not '{field.strip()}' ({_EXAMPLE})"
        )
    return value


def _check_stop(prompt: str, field: str) -> float:
    """Parse a stop field (``-inf`` allowed); PromptError when it is unusable."""
    if field.strip() == "":
        raise PromptError(
            f"Prompt '{_short(prompt)}': there is nothing after the last ':' "
            f"(write text:weight:stop, e.g. 'desert:1:0.8', or remove the ':')"
        )
    value = _to_float(field)
    if value is None:
        raise PromptError(
            f"Prompt '{_short(prompt)}': the stop value '{_short(field.strip(), 30)}' is not a "
            f"number (write text:weight:stop, e.g. 'desert:1:0.8')"
        )
    if math.isnan(value) or value == math.inf:
        raise PromptError(
            f"Prompt '{_short(prompt)}': the stop value must be a number or '-inf', "
            f"not '{field.strip()}' (write text:weight:stop, e.g. 'desert:1:0.8')"
        )
    return value


def _protected_prefix_end(text: str) -> int:
    """Index after a ``scheme://`` or leading ``C:\\`` marker; 0 when there is none."""
    scheme = text.find("://")
    if scheme >= 0:
        return scheme + 3
    drive = _DRIVE_RE.match(text)
    if drive:
        return drive.end()
    return 0


def split_prompt(text: str) -> WeightedPrompt:
    """Split one ``text:weight:stop`` prompt (upstream semantics plus the fixes above).

    The text is returned exactly as written (not stripped), as upstream does.
    Raises :class:`PromptError` for a trailing ``:``, a non-numeric weight/stop, a NaN or
    infinite weight, or a NaN/+inf stop.
    """
    # 1. URLs / Windows paths: only numeric trailing fields after the marker are split off.
    protected = _protected_prefix_end(text)
    if protected:
        prefix, tail = text[:protected], text[protected:]
        parts = tail.rsplit(":", 2)
        fields: list[str] = []
        while len(parts) > 1 and _to_float(parts[-1]) is not None:
            fields.insert(0, parts.pop())
        body = prefix + ":".join(parts)
    # 2. Ordinary text: split from the right at most twice; every split-off field must parse.
    else:
        body, *fields = text.rsplit(":", 2)
    # 3. Convert the fields; missing ones get the defaults weight 1 and stop -inf.
    weight = _check_weight(text, fields[0]) if len(fields) >= 1 else 1.0
    stop = _check_stop(text, fields[1]) if len(fields) >= 2 else float("-inf")
    return WeightedPrompt(body, weight, stop)


def parse_prompts(text: str, max_chars: int = 2000) -> list[list[WeightedPrompt]]:
    """Parse the artist's text box into story phases of weighted prompts.

    ``'a forest|fog:0.5 ^ a city:1:0.9'`` gives two phases. Unlike :func:`split_prompt`,
    the text of each prompt is stripped of surrounding whitespace here.
    """
    # 1. Whole-text checks.
    if text is None or not text.strip():
        raise PromptError("Enter a prompt describing the picture, e.g. 'a lighthouse at dusk'.")
    if len(text) > max_chars:
        raise PromptError(
            f"The prompt is {len(text)} characters long; the limit is {max_chars}. "
            "Please shorten it."
        )
    multi_phase = "^" in text
    phases: list[list[WeightedPrompt]] = []
    # 2. Story phases on '^' (each phase stripped, as upstream does).
    for p_idx, phase_text in enumerate(text.split("^"), start=1):
        phase_text = phase_text.strip()
        where_phase = f"story phase {p_idx}" if multi_phase else "the prompt"
        if not phase_text:
            raise PromptError(
                f"{where_phase[0].upper() + where_phase[1:]} is empty: two '^' in a row, or a "
                "'^' at the start or end. Put a prompt between each pair of '^'."
            )
        # 3. Prompts on '|'; empty pieces are mistakes, not prompts.
        phase: list[WeightedPrompt] = []
        for q_idx, piece in enumerate(phase_text.split("|"), start=1):
            if not piece.strip():
                raise PromptError(
                    f"Prompt {q_idx} in {where_phase} is empty: two '|' in a row, or a '|' at the "
                    "start or end. Remove the extra '|'."
                )
            # 4. text:weight:stop, then strip the text for this user-facing parser.
            parsed = split_prompt(piece)
            stripped = parsed.text.strip()
            if not stripped:
                raise PromptError(
                    f"Prompt '{_short(piece.strip())}' (prompt {q_idx} in {where_phase}) has a "
                    f"weight but no text ({_EXAMPLE})."
                )
            phase.append(WeightedPrompt(stripped, parsed.weight, parsed.stop))
        # 5. At least one prompt must actually pull or push.
        if all(p.weight == 0 for p in phase):
            raise PromptError(
                f"In {where_phase} all weights are zero, so nothing would guide the picture. "
                "Give at least one prompt a non-zero weight, e.g. 'desert:1'."
            )
        phases.append(phase)
    return phases


def parse_image_prompts(text: str) -> list[WeightedPrompt]:
    """Parse ``'|'``-separated image paths or URLs, each ``path:weight:stop``; blank -> ``[]``."""
    # 1. Nothing given is fine: no image prompts.
    if text is None or not text.strip():
        return []
    prompts: list[WeightedPrompt] = []
    # 2. Each piece stripped (upstream strips the paths); empty pieces are mistakes.
    for idx, piece in enumerate(text.split("|"), start=1):
        piece = piece.strip()
        if not piece:
            raise PromptError(
                f"Image prompt {idx} is empty: two '|' in a row, or a '|' at the start or end. "
                "Remove the extra '|'."
            )
        parsed = split_prompt(piece)
        path = parsed.text.strip()
        if not path:
            raise PromptError(
                f"Image prompt '{_short(piece)}' has a weight but no file name "
                "(write path:weight, e.g. 'style.png:0.5')."
            )
        prompts.append(WeightedPrompt(path, parsed.weight, parsed.stop))
    return prompts


def _split_list(text: str) -> list[str]:
    """Split a comma- and/or space-separated list; blank -> []."""
    if text is None:
        return []
    return [item for item in re.split(r"[,\s]+", text.strip()) if item]


def parse_noise_prompts(seeds: str, weights: str) -> list[tuple[int, float]]:
    """Pair noise-prompt seeds with weights, e.g. ``('1, 2', '0.5 -0.5')``; blank -> ``[]``."""
    # 1. Split both lists.
    seed_items, weight_items = _split_list(seeds), _split_list(weights)
    # 2. Seeds are whole numbers torch can seed a generator with.
    seed_values: list[int] = []
    for item in seed_items:
        try:
            value = int(item)
        except ValueError:
            raise PromptError(
                f"Noise seed '{_short(item, 30)}' is not a whole number (write seeds like '1, 2, 3')."
            ) from None
        if not 0 <= value <= _MAX_SEED:
            raise PromptError(
                f"Noise seed '{item}' is out of range; use a whole number from 0 to {_MAX_SEED}."
            )
        seed_values.append(value)
    # 3. Weights are finite numbers.
    weight_values: list[float] = []
    for item in weight_items:
        value_f = _to_float(item)
        if value_f is None or not math.isfinite(value_f):
            raise PromptError(
                f"Noise weight '{_short(item, 30)}' is not a number (write weights like '0.5, -0.5')."
            )
        weight_values.append(value_f)
    # 4. One weight per seed (upstream silently dropped the unmatched ones).
    if len(seed_values) != len(weight_values):
        raise PromptError(
            f"There are {len(seed_values)} noise seed(s) but {len(weight_values)} noise weight(s); "
            "give exactly one weight per seed."
        )
    return list(zip(seed_values, weight_values))


def phase_at(phases: Sequence[object], iteration: int, change_every: int) -> int:
    """Index of the active story phase at ``iteration``.

    Upstream moves to the next phase (cycling) at every iteration i > 0 with
    ``i % change_every == 0``; with ``change_every <= 0`` story mode is off and phase 0 stays.
    """
    # 1. Validate.
    if len(phases) == 0:
        raise ValueError("phase_at needs at least one phase")
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    # 2. Story mode off.
    if change_every <= 0:
        return 0
    # 3. One advance per completed block of change_every iterations, cycling.
    return (iteration // change_every) % len(phases)
