"""Every tab's "Re-export video" (ui/reexport.py) through the app's client API: the last run's frames made into a
new mp4 at another frame rate, size and pacing, added to the downloads; clear messages without a run."""
import imageio_ffmpeg
import pytest

from pipelines.engines import ENGINES
from tests.conftest import QUICK, api_args, outputs_of


def _frames(path) -> tuple[dict, int]:
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    return meta, sum(1 for _ in gen)


@pytest.mark.parametrize("name", list(ENGINES))
def test_the_last_run_re_exports_at_another_fps_size_and_pacing(client, name):
    out = outputs_of(name)
    browser = "reexport0123456789" + name.replace("_", "")
    with pytest.raises(Exception, match="no run to re-export yet"):
        client.predict(20, 0, "even", False, 0, browser, api_name=f"/{name}_reexport")
    run = client.predict(*api_args(name, prompt="a red circle", **QUICK[name]), browser, api_name=f"/{name}")
    meta0, n0 = _frames(run[out["video"]])
    video, files, note = client.predict(30, 0, "even", False, 0, browser, api_name=f"/{name}_reexport")
    meta1, n1 = _frames(video)
    assert n1 == n0 and meta1["fps"] == 30 and meta1["size"] == meta0["size"], (n0, n1, meta0, meta1)
    assert "Re-exported" in note and sum(f.endswith(".mp4") for f in files) == 2
    video, files, note = client.predict(12, 512, "change", True, 2, browser, api_name=f"/{name}_reexport")
    meta2, n2 = _frames(video)
    assert n2 == 24 and max(meta2["size"]) == 512 and "eased" in note and "visual change" in note
    assert sum(f.endswith(".mp4") for f in files) == 3
    with pytest.raises(Exception, match="at most"):
        client.predict(60, 0, "even", False, 10**6, browser, api_name=f"/{name}_reexport")
    # another browser has nothing to re-export
    with pytest.raises(Exception, match="no run to re-export yet"):
        client.predict(20, 0, "even", False, 0, "someoneelse0123456", api_name=f"/{name}_reexport")
