"""``mbm-agent view`` in a real browser: Playwright drives Debian's headless Chromium.

One viewer (two committed reference agents side by side: GoToObject reads, FindSound
hears) serves every test; each test opens its own page, so its own episodes.
Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Viewer

from mbm_agent.evaluation import EVAL_SEED_BASE

TIMEOUT_MS = 20_000


@pytest.fixture
def page(browser: Any, viewer: Viewer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(viewer.url)
    pg.wait_for_function("window.mbmView && window.mbmView.ready", timeout=TIMEOUT_MS)
    yield pg
    context.close()
    assert not errors, f"the page raised: {errors}"


def panel_state(page: Any, i: int) -> dict[str, Any]:
    return page.evaluate(f"window.mbmView.state.panels[{i}]")


def wait_steps(page: Any, after: int) -> None:
    """Wait until the page has drawn a state newer than the ``after``-th one."""
    page.wait_for_function(f"window.mbmView.steps > {after}", timeout=TIMEOUT_MS)


def test_page_loads_with_every_panel_for_the_senses_each_env_has(page: Any, tmp_path: Path) -> None:
    panels = page.locator("section.panel")
    assert panels.count() == 2
    go, fs = panels.nth(0), panels.nth(1)
    assert "GoToObject" in go.locator(".run-title").inner_text()
    assert go.locator("img.ego").get_attribute("src").startswith("data:image/png;base64,")
    assert go.locator("img.topdown").get_attribute("src").startswith("data:image/png;base64,")
    # GoToObject reads and does not hear; FindSound hears and does not read.
    assert go.locator(".instruction .word").count() >= 3
    assert not go.locator(".audio-box").is_visible()
    assert fs.locator(".audio-box").is_visible()
    assert not fs.locator(".instruction-box").is_visible()
    assert go.locator(".probs .row").count() == 3
    assert go.locator("table.senses tbody tr").count() == 2
    page.screenshot(path=str(tmp_path / "loaded.png"), full_page=True)


def test_frames_advance_and_the_reference_agent_reaches_its_goal_in_the_page(
    page: Any, tmp_path: Path
) -> None:
    """The committed GoToObject agent, on the first held-out evaluation seed, played by
    the page at full speed: the episode ends in success, as in eval.json."""
    page.fill("#seed", str(EVAL_SEED_BASE))
    page.dispatch_event("#seed", "change")
    page.wait_for_function(
        f"window.mbmView.state.panels[0].seed === {EVAL_SEED_BASE}", timeout=TIMEOUT_MS
    )
    first = page.locator("section.panel").nth(0).locator("img.topdown").get_attribute("src")
    page.fill("#speed", "30")
    page.click("#play")
    page.wait_for_function("window.mbmView.state.panels[0].t >= 1", timeout=TIMEOUT_MS)
    assert page.locator("section.panel").nth(0).locator("img.topdown").get_attribute("src") != first
    page.wait_for_function("window.mbmView.finished.some((f) => f.panel === 0)", timeout=TIMEOUT_MS)
    page.click("#play")  # pause
    finished = page.evaluate("window.mbmView.finished.filter((f) => f.panel === 0)")[0]
    assert finished["success"] is True, finished
    assert finished["seed"] == EVAL_SEED_BASE and finished["steps"] >= 1
    page.screenshot(path=str(tmp_path / "goal.png"), full_page=True)


def test_a_key_press_moves_the_agent_in_take_over_mode(page: Any, tmp_path: Path) -> None:
    page.check("#takeover")
    before = panel_state(page, 0)
    n = page.evaluate("window.mbmView.steps")
    page.keyboard.press("d")  # turn right
    wait_steps(page, n)
    after = panel_state(page, 0)
    assert after["t"] == before["t"] + 1
    assert after["last_action"] == {"index": 1, "by": "person"}
    assert after["pose"]["heading"] == (before["pose"]["heading"] + 1) % 4
    assert after["pose"]["row"] == before["pose"]["row"]
    assert after["pose"]["col"] == before["pose"]["col"]
    # Forward until the cell in front is free (or an object ends the episode).
    for _ in range(4):
        n = page.evaluate("window.mbmView.steps")
        page.keyboard.press("ArrowUp")
        wait_steps(page, n)
        now = panel_state(page, 0)
        assert now["last_action"] == {"index": 2, "by": "person"}
        if (now["pose"]["row"], now["pose"]["col"]) != (after["pose"]["row"], after["pose"]["col"]):
            break
        if now["done"]:
            break
        n = page.evaluate("window.mbmView.steps")
        page.keyboard.press("ArrowLeft")
        wait_steps(page, n)
        after = panel_state(page, 0)
    else:
        pytest.fail("forward never moved the agent")
    # The same action went to the second run's env on the same seed.
    assert panel_state(page, 1)["last_action"]["by"] == "person"
    page.screenshot(path=str(tmp_path / "takeover.png"), full_page=True)


def test_masking_a_sense_changes_the_shown_probabilities(page: Any, tmp_path: Path) -> None:
    fs = page.locator("section.panel").nth(1)
    shown = fs.locator(".probs .prob").all_inner_texts()
    n = page.evaluate("window.mbmView.steps")
    page.check("input.mask[data-key='audio']")
    wait_steps(page, n)
    masked = fs.locator(".probs .prob").all_inner_texts()
    assert masked != shown
    state = panel_state(page, 1)
    assert state["masked"] == ["audio"]
    audio_row = next(s for s in state["senses"] if s["key"] == "audio")
    # Masked, the shown probabilities are what the unmasked row predicted without audio.
    assert [f"{p:.3f}" for p in audio_row["probs_without"]] == masked
    assert "masked-sense" in (fs.locator("tr[data-key='audio']").get_attribute("class") or "")
    page.screenshot(path=str(tmp_path / "masked.png"), full_page=True)
    n = page.evaluate("window.mbmView.steps")
    page.uncheck("input.mask[data-key='audio']")
    wait_steps(page, n)
    assert fs.locator(".probs .prob").all_inner_texts() == shown


def test_the_audio_buffer_holds_the_non_silent_sound_the_agent_hears(page: Any) -> None:
    info = page.evaluate(
        """() => {
        const a = window.mbmView.audio[1];
        const peak = (xs) => xs.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
        return {
          exact: a.exact,
          channels: a.samples.length,
          n: a.samples[0].length,
          peaks: a.samples.map(peak),
          buffer: a.buffer ? {rate: a.buffer.sampleRate, n: a.buffer.length,
                              peak: peak(a.buffer.getChannelData(0))} : null,
        };
    }"""
    )
    assert info["exact"] is True
    assert info["channels"] == 2 and info["n"] == 8000
    assert min(info["peaks"]) > 0.01
    assert info["buffer"] is not None and info["buffer"]["rate"] == 8000
    assert info["buffer"]["peak"] > 0.01
    # The spectrogram canvas was drawn (not left black).
    lit = page.evaluate(
        """() => {
        const c = document.querySelectorAll('section.panel')[1].querySelector('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 60) lit++;
        return lit;
    }"""
    )
    assert lit > 100
