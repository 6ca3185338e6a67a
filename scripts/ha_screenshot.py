"""Screenshot a web page after it settled, with headless Chromium over the DevTools
protocol (Home Assistant's UI keeps a websocket open, so Chromium's own --screenshot
fires too early). Needs aiohttp: run it with Home Assistant's Python.

    /tmp/ha/bin/python scripts/ha_screenshot.py URL OUT.png [--chromium chromium] [--wait 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def shoot(chromium: str, url: str, out: Path, wait: float, height: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="segedge-chromium-") as profile:
        proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--hide-scrollbars", f"--window-size=1280,{height}",
                                 f"--user-data-dir={profile}",
                                 f"--remote-debugging-port={port}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as http:
                pages = None
                for _ in range(100):
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                            pages = [p for p in await r.json() if p["type"] == "page"]
                        if pages:
                            break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
                if not pages:
                    raise SystemExit("chromium: no page target")
                async with http.ws_connect(pages[0]["webSocketDebuggerUrl"],
                                           max_msg_size=0) as ws:
                    await ws.send_str(json.dumps({"id": 1, "method": "Page.navigate",
                                                  "params": {"url": url}}))
                    await asyncio.sleep(wait)
                    await ws.send_str(json.dumps({"id": 2, "method": "Page.captureScreenshot",
                                                  "params": {"format": "png"}}))
                    async for msg in ws:
                        data = json.loads(msg.data)
                        if data.get("id") == 2:
                            out.write_bytes(base64.b64decode(data["result"]["data"]))
                            return
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("out", type=Path)
    p.add_argument("--chromium", default="chromium")
    p.add_argument("--wait", type=float, default=20.0)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    job = shoot(args.chromium, args.url, args.out, args.wait, args.height)
    asyncio.run(asyncio.wait_for(job, 120))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
