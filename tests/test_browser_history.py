"""History and Send to in a real browser (the set-up and helpers of tests/test_browser.py).

A run appears in the History tab and is still there after the app restarts (a second server on the same
history folder); its settings load back into its tab, its files download, it can be deleted. Send to moves
a picture from every engine tab into every field of every tab that takes one, and the run made from it
names its parent in its PNG settings.
"""
from __future__ import annotations

import time

from pipelines import history, media
from tests.test_browser import (
    TABS,
    app_server,
    _fill,
    _open,
    _wait_status,
    browser,  # noqa: F401 - a fixture
    page,  # noqa: F401 - a fixture
    server,  # noqa: F401 - a fixture
)

BY_P = {t.p: t for t in TABS}
# every field that takes a picture: (the Send to menu entry, its tab, the upload's elem_id)
TARGETS = [("VQGAN+CLIP: init image", "VQGAN+CLIP", "vqc_init"),
           ("VQGAN+CLIP: image prompt", "VQGAN+CLIP", "vqc_targets"),
           ("Diffusion: init image", "Diffusion", "dif_init"),
           ("DALL-E: image to complete", "DALL-E", "dal_init"),
           ("unCLIP: picture to vary", "unCLIP", "unc_vary_image"),
           ("unCLIP: interpolation start", "unCLIP", "unc_image_a"),
           ("unCLIP: interpolation end", "unCLIP", "unc_image_b")]


def _until(check, what: str, timeout_s: float = 30):
    t0 = time.time()
    while not check():
        if time.time() - t0 > timeout_s:
            raise AssertionError(what)
        time.sleep(0.1)


def _show(pg, p: str) -> None:
    """Open an engine tab (whichever of its inner tabs is shown)."""
    pg.get_by_role("tab", name=BY_P[p].label, exact=True).click()
    pg.locator(f"#{p}_send").wait_for(state="visible")


def _history(pg):
    pg.get_by_role("tab", name="History").click()
    pg.locator("#his_refresh").wait_for(state="visible")


def _choose(pg, dropdown: str, option: str) -> None:
    pg.locator(f"#{dropdown} input").click()
    pg.get_by_role("option", name=option, exact=True).click()
    _until(lambda: pg.locator(f"#{dropdown} input").input_value() == option, f"{option!r} was not chosen", 10)


def test_a_run_appears_in_history_and_is_still_there_after_a_restart(browser, tmp_path):  # noqa: F811
    tab = BY_P["vqc"]
    ctx = browser.new_context(viewport={"width": 1300, "height": 1400}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    store = tmp_path / "history"
    try:
        with app_server(tmp_path / "out1", ATELIER_HISTORY_DIR=str(store)) as url:
            pg.goto(url)
            _open(pg, tab)
            _fill(pg, tab, tab.quick)
            pg.locator(f"#{tab.p}_run").click()
            _wait_status(pg, tab, "Done", 180)
            _history(pg)
            _until(lambda: pg.locator("#his_gallery img").count() == 1, "the run is not in the History tab")
            assert "1 run," in pg.locator("#his_usage").inner_text()
            browser_id = pg.evaluate("localStorage.getItem('atelier-client-id')")
        with app_server(tmp_path / "out2", ATELIER_HISTORY_DIR=str(store)) as url:                 # the app restarted, same history folder
            pg.goto(url)
            pg.evaluate(f"localStorage.setItem('atelier-client-id', '{browser_id}')")   # the same browser
            pg.reload()
            _history(pg)
            _until(lambda: pg.locator("#his_gallery img").count() == 1, "the run did not survive the restart")
            pg.locator("#his_gallery img").first.click()
            _until(lambda: tab.prompt in pg.locator("#his_details").inner_text(), "no details of the selected run")
            # download: its PNGs and video
            pg.locator("#his_download").click()
            _until(lambda: pg.locator("#his_files a").count() >= 3, "the run's files were not offered")
            with pg.expect_download() as dl:
                pg.locator("#his_files a").first.click()
            path = tmp_path / dl.value.suggested_filename
            dl.value.save_as(path)
            if path.suffix == ".png":
                assert media.read_meta(path)["settings"]["prompt"] == tab.prompt
            # load settings: into the VQGAN+CLIP tab, which is shown
            _open(pg, tab)
            pg.locator(f"#{tab.p}_prompt textarea").fill("something else")
            _history(pg)
            pg.locator("#his_load").click()
            _until(lambda: pg.locator(f"#{tab.p}_prompt textarea").input_value() == tab.prompt,
                   "the settings were not loaded back")
            assert pg.locator(f"#{tab.p}_run").is_visible()
            # delete
            _history(pg)
            pg.locator("#his_gallery img").first.click()
            _until(lambda: tab.prompt in pg.locator("#his_details").inner_text(), "no details of the selected run")
            pg.locator("#his_delete").click()
            _until(lambda: pg.locator("#his_gallery img").count() == 0, "the run was not deleted")
            assert "No runs yet" in pg.locator("#his_usage").inner_text()
    finally:
        ctx.close()


def _run(pg, p: str) -> None:
    """A quick run in the tab (unCLIP: variations of the picture sent to it)."""
    tab = BY_P[p]
    _show(pg, p)
    if p == "unc":
        pg.get_by_role("tab", name="Variations").click()
        box = pg.locator("#unc_vary_n input").first
        box.fill("2")
        box.press("Tab")
        if pg.locator("#unc_steps input").count() == 0:
            pg.get_by_role("button", name=tab.accordion).first.click()
        for key, value in tab.quick.items():
            pg.locator(f"#unc_{key} input").first.fill(value)
            pg.locator(f"#unc_{key} input").first.press("Tab")
        pg.locator("#unc_vary").click()
    else:
        _open(pg, tab)
        _fill(pg, tab, tab.quick)
        pg.locator(f"#{p}_run").click()


def _new_run(store, owner, before: set):
    """The run that lands in the history next (the status may still say "Done" of the tab's last run)."""
    found = []
    _until(lambda: found.extend(it for it in store.list(owner).items if it.id not in before) or found,
           "no new run in the history", 180)
    before.add(found[0].id)
    return found[0]


def test_send_to_moves_a_picture_across_every_pair_of_tabs(page, server):  # noqa: F811
    _open(page, BY_P["dif"])
    _until(lambda: page.evaluate("localStorage.getItem('atelier-client-id')"), "the page set no browser id")
    owner = "browser-" + page.evaluate("localStorage.getItem('atelier-client-id')")
    store = history.store()                     # the server's history folder (tests/conftest.py)
    before = {it.id for it in store.list(owner).items}

    # nothing to send yet: one sentence, nothing sent
    _open(page, BY_P["dif"])
    _choose(page, "dif_send_to", "unCLIP: picture to vary")
    page.locator("#dif_send").click()
    _until(lambda: "no Diffusion picture to send yet" in page.locator("#dif_send_note").inner_text(),
           "an empty result was sent")

    previous = None                             # the run whose picture the next tab starts from
    for p, field in [("vqc", None), ("dif", "init_image"), ("dal", "init_image"), ("unc", "vary_image")]:
        _run(page, p)
        run = _new_run(store, owner, before)
        _wait_status(page, BY_P[p], "Done", 30)
        meta = media.read_meta(run.picture(0))
        assert meta["run_id"] == run.id
        if previous is not None:                # the run made from the picture sent names its parent
            assert meta["parents"][field]["run_id"] == previous.id, (p, meta.get("parents"))
            assert meta["parents"][field]["engine"] == previous.engine
        for menu, label, elem in TARGETS:       # this tab's picture into every field of every tab
            _show(page, p)
            _choose(page, f"{p}_send_to", menu)
            page.locator(f"#{p}_send").click()
            _until(lambda e=elem: page.locator(f"#{e}").is_visible(), f"{p} -> {menu}: the tab was not shown")
            _until(lambda e=elem: page.locator(f"#{e} a").count() >= 1, f"{p} -> {menu}: no picture arrived")
            assert "Not sent" not in page.locator(f"#{p}_send_note").inner_text()
        previous = run

    # VQGAN+CLIP from the pictures sent to it: its init image and every image prompt name their runs
    _run(page, "vqc")
    run = _new_run(store, owner, before)
    parents = media.read_meta(run.picture(0))["parents"]
    assert parents["init_image"]["run_id"] == previous.id
    assert sum(k.startswith("targets[") for k in parents) == 4
    _wait_status(page, BY_P["vqc"], "Done", 30)
