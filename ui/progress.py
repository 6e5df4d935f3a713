"""The status line's progress while a run goes, and its time when it ends (over `pipelines.estimate.RunMeter`).

    **Step 4/10** · ...                          the step's line, then under it:
    <progress> 40 % · about 3.1 s left          a bar, steps done, time left (from the time per step so far)
    **Done** in 4.2 s (estimated 4.0 s) ...      the actual time beside the estimate

The bar comes under the step's own line (`ui.tab.step_status`), which stays first.

gr.Markdown renders the HTML `<progress>` element as a bar (checked in Chromium; tests/test_browser.py).
"""
from __future__ import annotations

from pipelines.estimate import RunMeter, human
from pipelines.events import Step


def seconds(s: float) -> str:
    """A run's time: "0.4 s", "12.3 s", then "4 min" / "1.2 h" (pipelines.estimate.human)."""
    return f"{s:.1f} s" if s < 60 else human(s)


def progress(meter: RunMeter, ev: Step) -> str:
    """A bar with the share done and the time left, as its own paragraph under the step's line."""
    f = meter.fraction(ev)
    left = meter.left(ev)
    when = "almost done" if left < 0.05 else f"about {seconds(left)} left"
    return (f'\n\n<progress value="{f:.3f}" max="1" style="width: 14em; vertical-align: middle"></progress> '
            f"{100 * f:.0f} % · {when}")


def done(meter: RunMeter, word: str) -> str:
    """"**Done** in 4.2 s (estimated 4.0 s)": the run's time (from its start to its results saved) and the estimate
    made before it."""
    actual = meter.actual if meter.actual is not None else meter.finished()
    return f"**{word}** in {seconds(actual)} (estimated {seconds(meter.estimate)})"
