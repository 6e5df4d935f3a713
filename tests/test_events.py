"""When previews are shown (pipelines/events.py PreviewCadence): every N steps, never, or auto within a budget."""
import time

from pipelines.events import AUTO, PreviewCadence


def _shown(cadence, total, preview_s=0.0, step_s=0.0):
    shown = []
    for i in range(total):
        time.sleep(step_s)
        if cadence.due(i):
            time.sleep(preview_s)
            cadence.took(i, preview_s)
            shown.append(i)
    return shown


def test_every_n_steps_and_always_the_last():
    assert _shown(PreviewCadence(5, 12), 12) == [0, 5, 10, 11]
    assert _shown(PreviewCadence(1, 4), 4) == [0, 1, 2, 3]


def test_none_means_none_even_at_the_end():
    assert _shown(PreviewCadence(0, 10), 10) == []


def test_auto_keeps_previews_under_the_budget():
    cadence = PreviewCadence(AUTO, 40)
    shown = _shown(cadence, 40, preview_s=0.05, step_s=0.002)
    # a preview costs about 25 steps (fewer on a busy machine): under 10 % of the run is one in 250
    assert cadence.chosen >= 10 and cadence.metrics == {"preview_every": float(cadence.chosen), "preview_budget": 0.1}
    assert shown[0] == 0 and shown[-1] == 39 and len(shown) <= 5
    cheap = PreviewCadence(AUTO, 10)
    _shown(cheap, 10, preview_s=0.0, step_s=0.002)
    assert cheap.chosen == 1
