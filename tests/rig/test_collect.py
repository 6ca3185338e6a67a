"""deploy/collect.yml: samples from a device to the controller, removed there only once the
copy's sha256 matched; other people's files and symlinks on the device left alone.

The first tests run the playbook against this machine (``-c local``, folders in tmp): fast,
always run. The rig test runs it over SSH against a booted rig device.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from tests.conftest import require
from tests.rig.rig import recap

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
CAMERA = "cam-1"


def seed(root: Path, camera: str = CAMERA, n: int = 3) -> List[str]:
    """n samples as the agent writes them, plus a foreign file and two symlinks."""
    from edge_agent.config import SamplesConfig
    from edge_agent.health.stats import Counters
    from edge_agent.quality import samples as S

    store = S.SampleStore(str(root), camera, SamplesConfig(), Counters(S.COUNTERS))
    rng = np.random.default_rng(1)
    names = []
    for i in range(n):
        name = S.sample_name(camera, 1.8e9 + i, i)
        image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 20:40] = 1
        assert store.write(S.Sample(name, image, mask, None, {"camera_id": camera}))
        names.append(name)
    return names


def plant(root: Path, secret: Path) -> Dict[str, Path]:
    """Another person's file, a symlink named like a sample (its sidecar a real file)
    pointing at a secret, and a camera folder that is a symlink."""
    cam = root / CAMERA
    foreign = cam / "images" / "beagle_1.jpg"
    foreign.write_bytes(b"not the agent's")
    name = "segedge-cam-1-20300101-000000-000-f9"
    link = cam / "images" / f"{name}.jpg"
    link.symlink_to(secret)
    (cam / "annotations/trimaps" / f"{name}.png").write_bytes(b"x")
    (cam / "annotations/samples" / f"{name}.json").write_text("{}")
    linked_cam = root / "cam-2"
    linked_cam.symlink_to(secret.parent)
    return {"foreign": foreign, "link": link, "linked_cam": linked_cam}


def run_local(device: Path, dest: Path, *extra: str) -> Tuple[int, str, Dict]:
    require(PLAYBOOK.exists(), "ansible-playbook (the deploy extra)")
    argv = [str(PLAYBOOK), "-i", "localhost,", "-c", "local", str(REPO / "deploy/collect.yml"),
            "-e", "segedge_hosts=localhost", "-e", "segedge_become=false",
            "-e", f"segedge_collect_dir={device}", "-e", f"segedge_collect_dest={dest}",
            "-e", f"segedge_collect_stage_dir={device.parent}/stage/run",
            "-e", f"ansible_python_interpreter={sys.executable}", *extra]
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "deploy/ansible.cfg"), NO_COLOR="1",
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(dest.parent / "ansible-tmp"))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env,
                          cwd=REPO / "deploy")
    out = proc.stdout + proc.stderr
    return proc.returncode, out, recap(out)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_copy(dest: Path, names: List[str], digests: Dict[str, str]) -> None:
    cam = dest / CAMERA
    for name in names:
        for rel in (f"images/{name}.jpg", f"annotations/trimaps/{name}.png",
                    f"annotations/samples/{name}.json"):
            assert sha(cam / rel) == digests[rel], rel
    assert (cam / "annotations/trainval.txt").read_text().split() == sorted(names)


def test_collect_copies_verifies_removes_and_leaves_the_rest_alone(tmp_path):
    device, dest = tmp_path / "device" / "samples", tmp_path / "controller"
    secret = tmp_path / "secret" / "shadow"
    secret.parent.mkdir()
    secret.write_text("secret\n")
    names = seed(device)
    planted = plant(device, secret)
    cam = device / CAMERA
    digests = {str(p.relative_to(cam)): sha(p) for p in cam.rglob("segedge-*")
               if p.is_file() and not p.is_symlink()}
    rc, out, rec = run_local(device, dest)
    assert rc == 0, out[-4000:]
    check_copy(dest / "localhost", names, digests)
    assert not list(cam.rglob(f"{names[0]}*")), "a verified sample stays on the device"
    assert planted["foreign"].read_bytes() == b"not the agent's"
    assert planted["link"].is_symlink() and planted["linked_cam"].is_symlink()
    assert secret.read_text() == "secret\n"
    assert not any("secret" in p.read_text(errors="replace")
                   for p in (dest / "localhost").rglob("*") if p.is_file())
    assert not (dest / "localhost" / "cam-2").exists()
    assert not (tmp_path / "device" / "stage" / "run").exists()
    # a second run finds nothing new: nothing changes
    rc, out, rec = run_local(device, dest)
    assert rc == 0 and rec["localhost"]["changed"] == 0, out[-4000:]


def test_a_correction_on_the_controller_is_never_overwritten(tmp_path):
    device, dest = tmp_path / "device" / "samples", tmp_path / "controller"
    names = seed(device, n=2)
    rc, out, _ = run_local(device, dest, "-e", "segedge_collect_remove=false")
    assert rc == 0, out[-4000:]
    assert len(list((device / CAMERA / "images").iterdir())) == 2  # copy only
    corrected = dest / "localhost" / CAMERA / "annotations/trimaps" / f"{names[0]}.png"
    corrected.write_bytes(b"a person's correction")
    rc, out, _ = run_local(device, dest)
    assert rc == 0, out[-4000:]
    assert corrected.read_bytes() == b"a person's correction"
    assert not list((device / CAMERA / "images").iterdir())  # both verified, both removed


def test_a_sample_changed_on_the_device_after_its_copy_is_kept_there(tmp_path):
    device, dest = tmp_path / "device" / "samples", tmp_path / "controller"
    names = seed(device, n=1)
    rc, out, _ = run_local(device, dest, "-e", "segedge_collect_remove=false")
    assert rc == 0, out[-4000:]
    image = device / CAMERA / "images" / f"{names[0]}.jpg"
    image.write_bytes(b"other bytes")  # the copy no longer matches the device
    rc, out, _ = run_local(device, dest)
    assert rc == 0, out[-4000:]
    assert image.read_bytes() == b"other bytes"


def test_paths_outside_the_layout_are_refused_by_the_controller():
    sys.path.insert(0, str(REPO / "deploy" / "files"))
    try:
        import segedge_samples as H
    finally:
        sys.path.pop(0)
    good = "cam-1/images/segedge-cam-1-x-f1.jpg"
    assert H.safe_rel(good) and H.safe_rel("c/annotations/samples/segedge-a.json")
    for bad in ("../images/segedge-a.jpg", "cam-1/../../etc/segedge-a.jpg", "/etc/passwd",
                "cam-1/images/beagle.jpg", "cam-1/images/segedge-a.png",
                "cam-1/other/segedge-a.jpg", ".x/images/segedge-a.jpg"):
        assert not H.safe_rel(bad), bad
    listing = {"samples": [{"camera": "x", "name": "segedge-a",
                            "files": {"../../x/segedge-a.jpg": {"sha256": "0"}}}]}
    assert H.plan("/nonexistent", listing) == {"fetch": [], "refused": ["../../x/segedge-a.jpg"]}


@pytest.mark.rig
@pytest.mark.timeout(900)
def test_collect_on_a_rig_device(rig_session, tmp_path):
    """Seeded on a booted device (as the agent user would write them), fetched over SSH."""
    session = rig_session
    dev = session.devices["dev-cpu"]
    local = tmp_path / "seed"
    names = seed(local)
    cam = local / CAMERA
    digests = {str(p.relative_to(cam)): sha(p) for p in cam.rglob("segedge-*")}
    root = dev.root
    on_device = "/var/lib/segedge/samples"
    target = root / on_device.lstrip("/")
    subprocess.run(["rm", "-rf", str(target)], check=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(local), str(target)], check=True)
    secret = root / "etc" / "segedge-secret"
    secret.write_text("secret\n")
    (target / CAMERA / "images" / "beagle_1.jpg").write_bytes(b"not the agent's")
    link = target / CAMERA / "images" / "segedge-cam-1-20300101-000000-000-f9.jpg"
    link.symlink_to("/etc/segedge-secret")
    (target / CAMERA / "annotations/samples" / f"{link.stem}.json").write_text("{}")
    (target / CAMERA / "annotations/trimaps" / f"{link.stem}.png").write_bytes(b"x")
    dev.run(f"id segedge && chown -hR segedge: {on_device}")  # the agent's, once provisioned
    dest = tmp_path / "collected"
    rc, out, rec = session.playbook("-e", f"segedge_collect_dest={dest}",
                                    "-e", "segedge_hosts=dev-cpu",
                                    play="collect.yml", timeout=300)
    assert rc == 0, out[-6000:]
    check_copy(dest / "dev-cpu", names, digests)
    left = dev.run(f"cd {on_device}/{CAMERA} && find . | sort").stdout.split()
    assert not [p for p in left if any(n in p for n in names)], left
    assert "./images/beagle_1.jpg" in left and f"./images/{link.name}" in left, left
    assert dev.run(f"test -L {on_device}/{CAMERA}/images/{link.name}").returncode == 0
    assert dev.run("cat /etc/segedge-secret").stdout == "secret\n"
    assert not (dest / "dev-cpu" / CAMERA / "images" / link.name).exists()
    rc, out, rec = session.playbook("-e", f"segedge_collect_dest={dest}",
                                    "-e", "segedge_hosts=dev-cpu",
                                    play="collect.yml", timeout=300)
    assert rc == 0 and rec["dev-cpu"]["changed"] == 0, out[-6000:]
