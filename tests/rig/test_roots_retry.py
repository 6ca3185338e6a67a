"""The rig's root builder rides out a Debian mirror's bad minutes (no mmdebstrap run here)."""

from __future__ import annotations

import subprocess

import pytest

from tests.rig.roots import build_with_retries


class FlakyMirror:
    """Stands in for mmdebstrap: fails ``failures`` times, then succeeds."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls: list[list[str]] = []

    def __call__(self, args, **_kwargs):
        self.calls.append(args)
        failed = len(self.calls) <= self.failures
        return subprocess.CompletedProcess(
            args, 25 if failed else 0, stdout="",
            stderr="E: apt-get update --error-on=any failed\n" if failed else "")


CMD = ["mmdebstrap", "--variant=minbase", "bookworm", "/nonexistent/root"]


def test_a_mirror_failure_is_retried_verbosely_and_then_succeeds(tmp_path):
    mirror, lines = FlakyMirror(failures=2), []
    build_with_retries(CMD, tmp_path / "root", lines.append, pause_s=0, run=mirror)
    assert len(mirror.calls) == 3
    assert "--quiet" in mirror.calls[0] and "--verbose" in mirror.calls[1]
    assert mirror.calls[0][-2:] == ["bookworm", "/nonexistent/root"]
    assert len(lines) == 2 and "try 1 of 3" in lines[0] and "apt-get update" in lines[0]


def test_a_mirror_that_stays_down_fails_with_what_apt_said(tmp_path):
    mirror = FlakyMirror(failures=9)
    with pytest.raises(RuntimeError, match=r"bookworm failed 3 times \(last exit 25\)"
                                           r"[\s\S]*apt-get update"):
        build_with_retries(CMD, tmp_path / "root", lambda _line: None, pause_s=0, run=mirror)
    assert len(mirror.calls) == 3
