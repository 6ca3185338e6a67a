"""``segedge-agent --config PATH`` / ``python -m edge_agent``.

Exit codes: 0 clean stop, 78 (EX_CONFIG) configuration or bundle problem (also a device
name OpenVINO does not know, or no listed device on this machine), 1 other failure;
``--check-config --probe``: 69 (EX_UNAVAILABLE) when the broker or a camera does not answer.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

from edge_agent import __version__
from edge_agent.bundle.manifest import BundleError, OpenedBundle
from edge_agent.config import DEFAULT_PATH, ConfigError, frames_in_topic, load

EX_OK, EX_FAIL, EX_UNAVAILABLE, EX_CONFIG = 0, 1, 69, 78
log = logging.getLogger("segedge")


def _setup_logging(level: str) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):  # journald adds its own timestamps
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level, logging.INFO), format=fmt,
                        stream=sys.stderr, force=True)


def _config_error(message: str) -> int:
    print(f"segedge-agent: configuration error: {message}", file=sys.stderr, flush=True)
    return EX_CONFIG


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="segedge-agent", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=os.environ.get("SEGEDGE_CONFIG", DEFAULT_PATH),
                        help="TOML config file ($SEGEDGE_CONFIG when set)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config, the bundle's checksums and the device "
                             "names, then exit")
    parser.add_argument("--probe", action="store_true",
                        help="with --check-config: also connect to the broker and each "
                             "camera, and say which failed")
    parser.add_argument("--version", action="version", version=f"segedge-agent {__version__}")
    args = parser.parse_args(argv)
    if args.probe and not args.check_config:
        parser.error("--probe goes with --check-config")
    try:
        cfg, ignored = load(args.config)
        opened = OpenedBundle.open(cfg.model.bundle, cfg.model.target)
        manifest, entry = opened.manifest, opened.target
        from edge_agent.config.preflight import (
            check_devices,  # loads openvino: after the file's own checks
        )

        absent = check_devices(cfg.model.devices)
    except ConfigError as exc:
        return _config_error(str(exc))
    except BundleError as exc:
        return _config_error(f"model.bundle: {exc}")
    _setup_logging(cfg.log_level)
    for name in ignored:
        log.warning("environment variable %s matches no config key; ignored", name)
    if args.check_config:
        if args.probe:
            from edge_agent.config.preflight import probe

            failed = probe(cfg)
            for line in failed:
                print(f"segedge-agent: probe failed: {line}", file=sys.stderr)
            if failed:
                return EX_UNAVAILABLE
        print(f"segedge-agent: config OK: {args.config}: device {cfg.device_id}, bundle "
              f"{manifest.name} {manifest.version} target {entry.name} ({entry.precision}), "
              f"devices {','.join(cfg.model.devices)}"
              + (f" (not on this machine: {', '.join(absent)})" if absent else "")
              + f", mqtt {cfg.mqtt.host}:{cfg.mqtt.port}"
              + (f", cameras {','.join(c.id for c in cfg.cameras) or 'none'}"
                 if cfg.multi_camera else "")
              + (f", frames in on {frames_in_topic(cfg)}" if cfg.frames_in.enabled else "")
              + (", probed: broker and cameras answer" if args.probe else ""))
        return EX_OK
    return run(cfg, opened)


def _quiet_ffmpeg() -> None:
    """FFmpeg's and OpenCV's own stderr lines on every camera retry: errors only.

    Read by OpenCV when cv2 is imported, so set before; an operator's value wins.
    """
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; we log the reason
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


def run(cfg, opened: Optional[OpenedBundle] = None) -> int:
    """``opened``: the bundle the CLI checked, so it is not hashed a second time."""
    _quiet_ffmpeg()
    from edge_agent.app import Agent  # openvino and cv2 load only when the agent really runs
    from edge_agent.inference.engine import InferenceError

    stop = threading.Event()

    def _on_signal(signum, _frame) -> None:
        if stop.is_set():
            return
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()
        timer = threading.Timer(15.0, lambda: os._exit(EX_FAIL))  # a stuck shutdown
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        agent = Agent(cfg, stop, opened=opened)
        return agent.run()
    except BundleError as exc:
        return _config_error(f"model.bundle: {exc}")
    except ConfigError as exc:  # found at start: e.g. metrics.listen cannot be bound
        return _config_error(str(exc))
    except InferenceError as exc:
        if getattr(exc, "none_present", False):  # the config names no device of this machine
            return _config_error(f"model.devices: {exc.short}")
        log.error("%s", exc)
        return EX_FAIL
    except Exception:  # noqa: BLE001 - last resort: log it, let systemd restart us
        log.exception("fatal error")
        return EX_FAIL


if __name__ == "__main__":
    sys.exit(main())
