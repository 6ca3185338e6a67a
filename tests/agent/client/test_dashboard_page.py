"""``segedge-dashboard`` in a real headless Chromium, against a real Mosquitto and agent.

One agent (overlays every 0.5 s), an operator dashboard and a read-only one, one browser:
the cards appear with live figures; the overlay image changes; the filter hides and
shows cards by state; the pause button pauses masks (the agent's reply on the card, no
mask while paused) and resume brings them back; the read-only page has no buttons and
its command endpoint refuses; the agent stopped turns its card offline (greyed, last
seen). Under CI (CI=true) a Chromium that is missing or cannot start fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import pytest

from tests.agent.helpers import ROOT, agent_config, wait_until
from tests.conftest import IN_CI, require
from tests.helpers.cdp import Chromium, Page, chromium_binary
from tools.broker import free_port

pytestmark = pytest.mark.e2e


class DashboardProcess:
    """``python -m edge_agent.client.dashboard.server`` on a free loopback port."""

    def __init__(self, broker, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.client.dashboard.server", "--host", broker.host,
             "--port", str(broker.port), "--listen", f"127.0.0.1:{self.port}", *args],
            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert self.url in line, line + self.proc.stdout.read() if self.proc.poll() else line

    def fleet(self) -> dict:
        with urllib.request.urlopen(self.url + "api/fleet", timeout=5) as r:
            return json.load(r)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(10)


def card(device: str, query: str = "") -> str:
    return f"document.querySelector('[data-id=\"{device}\"]{query}')"


def browser_or_fail() -> Chromium:
    require(chromium_binary() is not None, "chromium (apt-get install chromium)")
    try:
        return Chromium().__enter__()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"chromium cannot run under CI=true: {exc}", pytrace=False)
        pytest.skip(f"chromium cannot run here: {exc}")


def masks_since(collector, t: float) -> int:
    with collector.lock:
        return sum(1 for kind, _, _, at in collector.messages if kind == "mask" and at >= t)


def test_dashboard_in_chromium(broker, tiny_bundle, clip, agents, collectors, unique_id,
                               tmp_path):
    agent = agents(agent_config(tiny_bundle, str(clip), broker.host, broker.port, unique_id,
                                output={"stats_interval_s": 1.0, "max_publish_fps": 10.0,
                                        "overlay_interval_s": 0.5}))
    masks = collectors(broker, unique_id)
    operator = DashboardProcess(broker, "--operator", "--stale-after", "60")
    viewer = DashboardProcess(broker)
    browser: Optional[Chromium] = None
    try:
        browser = browser_or_fail()
        page: Page = browser.page()
        page.navigate(operator.url)

        # the DOM shows the card, online, with live figures, model and device
        assert page.wait_for(f"{card(unique_id)}?.dataset.state === 'online'", 60), (
            agent.log()[-2000:], operator.fleet())
        assert page.wait_for(f"!{card(unique_id)}.innerText.includes('cap –')", 10)
        text = page.evaluate(f"{card(unique_id)}.innerText")
        assert "CPU" in text and "ONLINE" in text.upper() and "last seen" in text, text

        # the overlay image changes over time (a new one loaded, not just asked for)
        img = card(unique_id, " img.overlay")
        assert page.wait_for(f"{img}.naturalWidth > 0 && !{img}.hidden", 45)
        first = page.evaluate(f"{img}.currentSrc")
        assert page.wait_for(f"{img}.currentSrc !== {json.dumps(first)} && {img}.complete "
                             f"&& {img}.naturalWidth > 0", 10), first

        # filter by state: offline hides the online card, online shows it again
        page.evaluate("document.querySelector('[data-filter=offline]').click()")
        assert page.evaluate(f"{card(unique_id)}.classList.contains('hidden')")
        assert page.evaluate("document.querySelector('[data-count=offline]').textContent") == "0"
        page.evaluate("document.querySelector('[data-filter=online]').click()")
        assert not page.evaluate(f"{card(unique_id)}.classList.contains('hidden')")
        page.evaluate("document.querySelector('[data-filter=all]').click()")

        # the pause button pauses masks, the agent's reply is shown on the card
        reply = card(unique_id, " [data-role=reply]")
        pause, resume = (card(unique_id, f' [data-command="paused:{v}"]') for v in ("ON", "OFF"))
        page.evaluate(f"{pause}.click()")
        assert page.wait_for(f"{reply}.dataset.result === 'accepted'", 15), page.evaluate(
            f"{reply}.textContent")
        assert "paused by command" in page.wait_for(
            f"{card(unique_id)}.dataset.state === 'degraded' && {card(unique_id)}.innerText", 10)
        time.sleep(0.5)  # masks already in flight when the pause landed
        quiet_from = time.monotonic()
        time.sleep(2.0)
        assert masks_since(masks, quiet_from) == 0, "masks published while paused"
        page.evaluate(f"{resume}.click()")
        assert page.wait_for(f"{reply}.dataset.result === 'accepted' && "
                             f"{reply}.textContent.includes('OFF')", 15)
        resumed = time.monotonic()
        assert wait_until(lambda: masks_since(masks, resumed) > 0, 10), "no masks after resume"
        assert page.wait_for(f"{card(unique_id)}.dataset.state === 'online'", 10)

        # read-only by default: no buttons, and the command endpoint refuses
        page.navigate(viewer.url)
        assert page.wait_for(f"{card(unique_id)}?.dataset.state === 'online'", 20)
        assert page.evaluate("document.querySelectorAll('.actions, button[data-command]')"
                             ".length") == 0
        req = urllib.request.Request(viewer.url + "api/command", method="POST",
                                     data=json.dumps({"id": unique_id, "feature": "paused",
                                                      "value": "ON"}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 403

        # the agent stopped: its card turns offline, greyed, with the time since last seen
        page.navigate(operator.url)
        assert page.wait_for(f"{card(unique_id)}?.dataset.state === 'online'", 20)
        assert agent.terminate() == 0
        assert page.wait_for(f"{card(unique_id)}.dataset.state === 'offline'", 15)
        assert page.evaluate(f"getComputedStyle({card(unique_id)}).filter") == "grayscale(1)"
        assert "last seen" in page.evaluate(f"{card(unique_id)}.innerText")
        page.screenshot(tmp_path / "dashboard.png")
        assert (tmp_path / "dashboard.png").stat().st_size > 1000
    finally:
        if browser is not None:
            browser.__exit__()
        assert operator.stop() == 0
        assert viewer.stop() == 0
    assert Path(tmp_path / "dashboard.png").exists()
