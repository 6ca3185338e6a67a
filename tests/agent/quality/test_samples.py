"""Samples for labelling: the choice, the pre-label, the folder's bounds and its safety.

The folder tests write real files. Read-only and full-disk folders are real too: as root
(where permission bits mean nothing) a read-only tmpfs and a 64 KiB tmpfs are mounted
for the test; elsewhere the read-only folder is a chmod 0555 one and the full disk is
skipped with its reason.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge_agent.config import SamplesConfig
from edge_agent.quality import samples as S

CAMERA = "cam-01"


def _cfg(**kw) -> SamplesConfig:
    values = dict(enabled=True, per_minute=600.0, random_share=0.0, uncertain_above=0.2,
                  max_samples=100, max_bytes=64 << 20)
    values.update(kw)
    return SamplesConfig(**values)


def _engine():
    target = SimpleNamespace(model="cpu/model.xml", files=[
        SimpleNamespace(path="cpu/model.xml", sha256="a" * 64),
        SimpleNamespace(path="cpu/model.bin", sha256="b" * 64)])
    return SimpleNamespace(info=SimpleNamespace(name="pets", version="1.0.0", precision="INT8"),
                           target=target)


def _frame(seed: int = 0, hw=(120, 160)) -> np.ndarray:
    """A noisy BGR frame (noise keeps JPEGs large: the byte bounds need that)."""
    return np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)


def _mask(hw=(64, 64)) -> np.ndarray:
    mask = np.zeros(hw, np.uint8)
    mask[hw[0] // 4: 3 * hw[0] // 4, hw[1] // 4: 3 * hw[1] // 4] = 1
    return mask


def _sample(store: S.SampleStore, i: int, ts: float = 1_800_000_000.0) -> S.Sample:
    return S.Sample(S.sample_name(store.camera_id, ts + i, i), _frame(i), _mask(), None,
                    {"camera_id": store.camera_id, "frame_id": i, "reason": "uncertain"})


def _store(root: Path, **kw) -> S.SampleStore:
    return S.SampleStore(str(root), CAMERA, _cfg(**kw), S.Counters(S.COUNTERS))


def _ours(root: Path):
    cam = root / CAMERA
    return sorted(p.name[: -len(".json")] for p in (cam / "annotations/samples").glob(
        "segedge-*.json"))


def _listed(root: Path):
    return (root / CAMERA / "annotations/trainval.txt").read_text().split()


# --- the choice -----------------------------------------------------------------------
def test_uncertain_frames_are_chosen_at_the_rate_and_others_are_not():
    chooser = S.Chooser(_cfg(per_minute=6.0, random_share=0.0), now=0.0)
    assert chooser.choose(0.5, 0.0) == "uncertain"
    assert chooser.choose(0.9, 1.0) is None  # 6 a minute: one per 10 s, no bursts
    assert chooser.choose(0.1, 20.0) is None  # below uncertain_above: never for uncertainty
    assert chooser.choose(None, 20.0) is None  # no figures: only a random pick could take it
    assert chooser.choose(0.2, 20.0) == "uncertain"  # at the threshold counts
    picked = [t for t in range(30, 630) if chooser.choose(0.9, float(t))]
    assert 59 <= len(picked) <= 61, len(picked)  # 10 minutes at 6 a minute


def test_random_share_takes_frames_whatever_their_figures_at_its_own_rate():
    draws = iter([0.0] + [0.5] * 1000)  # the first slot at once, then the mean interval
    chooser = S.Chooser(_cfg(per_minute=4.0, random_share=0.25), now=0.0,
                        rand=lambda: next(draws))
    assert chooser.choose(None, 0.0) == "random"  # even a frame without figures
    times = [t for t in range(1, 3601) if chooser.choose(0.0, float(t)) == "random"]
    assert len(times) == 60, len(times)  # 4 a minute x 0.25 = 1 a minute for an hour
    chooser = S.Chooser(_cfg(per_minute=4.0, random_share=0.0), now=0.0)
    assert not any(chooser.choose(0.0, float(t)) for t in range(3600))


def test_the_two_shares_together_stay_under_per_minute():
    chooser = S.Chooser(_cfg(per_minute=10.0, random_share=0.1), now=0.0)
    picks = [chooser.choose(0.9, t / 12.0) for t in range(12 * 600)]  # 12 fps, 10 minutes
    uncertain, random_ = picks.count("uncertain"), picks.count("random")
    assert uncertain + random_ <= 10 * 10 + 2
    assert 85 <= uncertain <= 92 and 5 <= random_ <= 15, (uncertain, random_)


def test_nan_and_out_of_range_figures_are_no_figures():
    for bad in (float("nan"), float("inf"), -0.1, 1.5, "x", None):
        assert S.finite_share(bad) is None
    assert S.finite_share(0.25) == 0.25


# --- the pre-label --------------------------------------------------------------------
def test_prelabel_is_a_pet_trimap_at_frame_size_with_a_thin_unsure_border():
    trimap = S.prelabel(_mask((64, 64)), (320, 320))
    assert trimap.shape == (320, 320) and trimap.dtype == np.uint8
    assert set(np.unique(trimap)) == {1, 2, 3}
    assert trimap[160, 160] == 1 and trimap[5, 5] == 2
    band = trimap == 3
    assert 0 < band.mean() < 0.05  # thin: 2 px each side at 320 px
    assert band[80, 75:90].any() and not band[160, 100:220].any()


def test_prelabel_marks_the_models_unsure_pixels_when_it_has_them():
    unsure = np.zeros((64, 64), bool)
    unsure[:8, :8] = True
    trimap = S.prelabel(_mask((64, 64)), (64, 64), unsure)
    assert (trimap[:8, :8] == 3).all() and (trimap == 3).sum() == 64
    tri_model = np.array([[0, 1, 2]], np.uint8)  # a trimap model's border class -> 3
    assert S.prelabel(tri_model, (1, 3), np.zeros((1, 3), bool)).tolist() == [[2, 1, 3]]


def test_names_sort_oldest_first_and_carry_the_prefix():
    a = S.sample_name("cam-01", 1_800_000_000.5, 7)
    b = S.sample_name("cam-01", 1_800_000_060.0, 3)
    assert a.startswith("segedge-cam-01-20270115-") and a.endswith("-500-f7")
    assert a < b and " " not in a


# --- the folder -----------------------------------------------------------------------
def test_a_sample_is_written_in_the_pet_layout_the_build_reads(tmp_path):
    data = pytest.importorskip("build_models.data")
    store = _store(tmp_path)
    assert store.write(_sample(store, 1))
    cam = tmp_path / CAMERA
    name = _ours(tmp_path)[0]
    assert _listed(tmp_path) == [name]
    image, mask = data.load_pair(data.Pair(name, cam / "images" / f"{name}.jpg",
                                           cam / "annotations/trimaps" / f"{name}.png"))
    assert image.shape == (120, 160, 3) and mask.shape == (120, 160)
    from PIL import Image

    with Image.open(cam / "annotations/trimaps" / f"{name}.png") as im:  # colours in an editor
        assert im.mode == "P" and set(np.unique(np.asarray(im))) == {1, 2, 3}
        assert im.getpalette()[3:12] == [255, 0, 200, 40, 40, 40, 255, 190, 0]
    assert [p.name for p in data.scan_split(cam, "trainval").pairs] == [name]
    side = json.loads((cam / "annotations/samples" / f"{name}.json").read_text())
    assert side["camera_id"] == CAMERA and side["image"] == {"width": 160, "height": 120}
    assert side["prelabel"]["unsure"] == "border" and len(side["prelabel"]["sha256"]) == 64
    assert not list(cam.rglob(".segedge-tmp-*"))
    assert store.counters.snapshot()["saved"] == 1


def test_the_count_bound_drops_the_oldest_and_counts_it(tmp_path):
    store = _store(tmp_path, max_samples=3)
    for i in range(5):
        assert store.write(_sample(store, i))
    kept = _ours(tmp_path)
    assert [n.rsplit("-f", 1)[1] for n in kept] == ["2", "3", "4"]
    assert _listed(tmp_path) == kept
    assert store.counters.snapshot()["dropped_oldest"] == 2
    assert len(list((tmp_path / CAMERA / "images").iterdir())) == 3


def test_the_byte_bound_drops_the_oldest_and_a_too_big_sample_is_skipped(tmp_path):
    probe = _store(tmp_path / "probe")
    probe.write(_sample(probe, 0))
    one = sum(p.stat().st_size for p in (tmp_path / "probe").rglob("segedge-*"))
    store = _store(tmp_path / "b", max_bytes=int(one * 2.5))
    for i in range(4):
        store.write(_sample(store, i))
    files = [p for p in (tmp_path / "b").rglob("segedge-*")]
    assert sum(p.stat().st_size for p in files) <= one * 2.5
    assert len(_ours(tmp_path / "b")) == 2 and store.counters.snapshot()["dropped_oldest"] == 2
    small = _store(tmp_path / "c", max_bytes=one // 2)
    assert not small.write(_sample(small, 0))
    assert small.counters.snapshot()["too_big"] == 1 and small.stopped is None


def test_other_peoples_files_are_left_alone_and_their_list_lines_kept(tmp_path):
    store = _store(tmp_path, max_samples=1)
    cam = tmp_path / CAMERA
    (cam / "images").mkdir(parents=True)
    (cam / "annotations").mkdir()
    (cam / "images" / "beagle_1.jpg").write_bytes(b"someone's")
    (cam / "annotations" / "trainval.txt").write_text("beagle_1 1 1 1\n")
    old = cam / "images" / "segedge-cam-01-19990101-000000-000-f1.jpg"
    old.write_bytes(b"same prefix, another owner")
    if os.geteuid() == 0:
        os.chown(old, 12345, 12345)
    else:
        old.unlink()
    for i in range(3):
        assert store.write(_sample(store, i))
    assert (cam / "images" / "beagle_1.jpg").read_bytes() == b"someone's"
    if os.geteuid() == 0:
        assert old.read_bytes() == b"same prefix, another owner"
    lines = (cam / "annotations" / "trainval.txt").read_text().splitlines()
    assert lines[0] == "beagle_1 1 1 1" and lines[1:] == _ours(tmp_path)
    assert len(_ours(tmp_path)) == 1


def test_a_symlinked_camera_folder_is_refused_and_nothing_is_written_outside(tmp_path, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / CAMERA).symlink_to(outside)
    store = _store(root)
    with caplog.at_level(logging.ERROR, "segedge.samples"):
        assert not store.write(_sample(store, 0))
        assert not store.write(_sample(store, 1))
    assert list(outside.iterdir()) == []
    assert "symlink" in store.stopped and store.counters.snapshot()["failed"] == 1
    assert len([r for r in caplog.records if "sampling stopped" in r.message]) == 1


@pytest.mark.parametrize("where", ["images", "annotations", "annotations/trimaps",
                                   "annotations/trainval.txt"])
def test_a_symlink_inside_the_tree_is_never_followed(tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "trainval.txt").write_text("theirs\n")
    cam = tmp_path / "root" / CAMERA
    link = cam / where
    link.parent.mkdir(parents=True)
    link.symlink_to(outside / "trainval.txt" if where.endswith(".txt") else outside)
    store = _store(tmp_path / "root")
    assert not store.write(_sample(store, 0))
    assert store.stopped
    assert sorted(p.name for p in outside.iterdir()) == ["trainval.txt"]
    assert (outside / "trainval.txt").read_text() == "theirs\n"
    assert link.is_symlink() and not list(cam.rglob("segedge-*"))


def test_a_symlink_with_our_prefix_is_neither_counted_nor_deleted(tmp_path):
    target = tmp_path / "precious.jpg"
    target.write_bytes(b"keep me")
    store = _store(tmp_path / "root", max_samples=1)
    assert store.write(_sample(store, 5))
    link = tmp_path / "root" / CAMERA / "images" / "segedge-cam-01-19990101-000000-000-f0.jpg"
    link.symlink_to(target)
    assert store.write(_sample(store, 6))
    assert link.is_symlink() and target.read_bytes() == b"keep me"


def test_the_sample_path_outside_is_not_reachable_through_the_camera_id(tmp_path):
    """Camera ids are checked ids ([A-Za-z0-9._-], no '/'); '..' is the one name that
    could climb, and the directory walk refuses it like any name that is not a folder
    of ours (the config refuses it first: tests/agent/config)."""
    store = S.SampleStore(str(tmp_path / "root"), "..", _cfg(), S.Counters(S.COUNTERS))
    (tmp_path / "root").mkdir()
    store.write(_sample(store, 0))
    assert not list(tmp_path.glob("images")) and not list(tmp_path.glob("annotations"))


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no write reaches: a read-only tmpfs as root, chmod 0555 otherwise."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"root without mount (no read-only folder to test): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_a_read_only_folder_stops_sampling_with_one_line(read_only_dir, caplog):
    store = _store(read_only_dir)
    with caplog.at_level(logging.ERROR, "segedge.samples"):
        for i in range(3):
            assert not store.write(_sample(store, i))
    assert store.stopped and "errno E" in store.stopped, store.stopped
    assert any(code in store.stopped for code in ("EROFS", "EACCES")), store.stopped
    assert store.counters.snapshot()["failed"] == 1
    assert len(caplog.records) == 1


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tiny tmpfs, which needs root to mount")
    path = tmp_path / "full"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_a_full_disk_stops_sampling_and_leaves_no_half_sample(full_disk, caplog):
    store = _store(full_disk)
    with caplog.at_level(logging.ERROR, "segedge.samples"):
        written = [store.write(S.Sample(S.sample_name(CAMERA, 1.8e9 + i, i),
                                        _frame(i, (240, 320)), _mask(), None, {}))
                   for i in range(6)]
    assert not all(written)
    assert "ENOSPC" in store.stopped, store.stopped
    assert len(caplog.records) == 1 and store.counters.snapshot()["failed"] == 1
    names = {p.name.rsplit(".", 1)[0] for p in full_disk.rglob("segedge-*")}
    for name in names:  # whatever was written, it is whole
        assert len(list(full_disk.rglob(f"{name}.*"))) == 3, name
    assert not list(full_disk.rglob(".segedge-tmp-*"))


# --- the sampler and its writer thread ------------------------------------------------
def test_offer_queues_by_reference_and_the_writer_writes_the_sidecar(tmp_path):
    writer = S.SampleWriter(threading.Event())
    sampler = S.Sampler(CAMERA, _cfg(), str(tmp_path), writer, clock=lambda: 100.0)
    figures = SimpleNamespace(uncertain=0.35, margin=0.4)
    assert sampler.offer(42, 1_800_000_000.25, _frame(), _mask(), figures, _engine()) \
        == "uncertain"
    writer.drain()
    name = _ours(tmp_path)[0]
    side = json.loads((tmp_path / CAMERA / "annotations/samples" / f"{name}.json").read_text())
    assert side["frame_id"] == 42 and side["ts"] == 1_800_000_000.25
    assert side["model"] == {"name": "pets", "version": "1.0.0", "precision": "INT8",
                             "file": "cpu/model.xml", "sha256": "a" * 64}
    assert (side["uncertain"], side["margin"], side["reason"]) == (0.35, 0.4, "uncertain")
    assert sampler.report()["saved"] == 1 and sampler.report()["stopped"] is None


def test_nan_figures_never_reach_the_sidecar(tmp_path):
    writer = S.SampleWriter(threading.Event())
    sampler = S.Sampler(CAMERA, _cfg(random_share=1.0), str(tmp_path), writer,
                        clock=lambda: 0.0, rand=lambda: 0.0)
    figures = SimpleNamespace(uncertain=float("nan"), margin=float("inf"))
    assert sampler.offer(1, 1.8e9, _frame(), _mask(), figures, _engine()) == "random"
    writer.drain()
    text = next((tmp_path / CAMERA / "annotations/samples").glob("*.json")).read_text()
    side = json.loads(text)
    assert side["uncertain"] is None and side["margin"] is None and "NaN" not in text


def test_a_full_queue_drops_and_counts_and_never_waits(tmp_path):
    writer = S.SampleWriter(threading.Event(), size=2)  # not started: nothing drains it
    sampler = S.Sampler(CAMERA, _cfg(per_minute=600.0), str(tmp_path), writer,
                        clock=iter(range(0, 10000, 10)).__next__)
    figures = SimpleNamespace(uncertain=0.9, margin=0.1)
    reasons = [sampler.offer(i, 1.8e9 + i, _frame(), _mask(), figures, _engine())
               for i in range(5)]
    assert reasons == ["uncertain", "uncertain", None, None, None]
    assert sampler.report()["queue_full"] == 3 and sampler.report()["chosen"] == 5


def test_the_writer_thread_writes_and_stops_with_the_stop_event(tmp_path):
    stop = threading.Event()
    writer = S.SampleWriter(stop)
    writer.start()
    sampler = S.Sampler(CAMERA, _cfg(), str(tmp_path), writer, clock=lambda: 0.0)
    sampler.offer(1, 1.8e9, _frame(), _mask(), SimpleNamespace(uncertain=1.0, margin=0.0),
                  _engine())
    for _ in range(100):
        if sampler.report()["saved"]:
            break
        threading.Event().wait(0.05)
    stop.set()
    writer.join(2.0)
    assert sampler.report()["saved"] == 1 and not writer.thread.is_alive()
    assert writer.thread.name == "samples"


def test_a_stopped_sampler_chooses_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    writer = S.SampleWriter(threading.Event())
    sampler = S.Sampler(CAMERA, _cfg(), str(tmp_path / "file"), writer, clock=lambda: 0.0)
    figures = SimpleNamespace(uncertain=1.0, margin=0.0)
    assert sampler.offer(1, 1.8e9, _frame(), _mask(), figures, _engine())
    writer.drain()
    assert sampler.report()["stopped"]
    assert sampler.offer(2, 1.8e9, _frame(), _mask(), figures, _engine()) is None


# --- the pipeline hands published frames over ------------------------------------------
def test_the_publish_step_offers_each_published_frame_to_the_cameras_sampler(tmp_path):
    from edge_agent.cameras import Camera, Outputs
    from edge_agent.config import CameraConfig, OutputConfig, SourceConfig
    from edge_agent.health.stats import Counters
    from edge_agent.inference.pipeline import FrameMeta, Pipeline
    from edge_agent.protocol.messages import ModelInfo

    engine = _engine()
    engine.info = ModelInfo("pets", "1.0.0", "INT8")
    engine.num_requests, engine.classes, engine.result_kind = 1, ["background", "pet"], "classes"
    engine.device = "CPU"
    cfg = CameraConfig.from_sections(CAMERA, SourceConfig(uri="x"), OutputConfig(),
                                     samples=_cfg(random_share=1.0))
    camera = Camera(cfg, Outputs(mask=lambda text: True))
    writer = S.SampleWriter(threading.Event())
    camera.sampler = S.Sampler(CAMERA, cfg.samples, str(tmp_path), writer,
                               clock=lambda: 0.0, rand=lambda: 0.0)
    pipe = Pipeline(engine, "model", None, lambda cid: camera, Counters(), threading.Event())
    frame = _frame(3, (96, 128))
    meta = FrameMeta(0, CAMERA, 7, 1.8e9, __import__("time").monotonic(), (96, 128), frame,
                     engine)
    pipe._publish_one(camera, meta, _mask((32, 32))[None])
    writer.drain()
    assert camera.masks_sent == 1 and len(_ours(tmp_path)) == 1
    image = cv2.imread(str(next((tmp_path / CAMERA / "images").glob("*.jpg"))))
    assert image.shape == (96, 128, 3)
