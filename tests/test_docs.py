"""docs/integrations.md against the code: every command, every entity, the example config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from edge_agent.control import homeassistant as ha
from edge_agent.control import rules as commands

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "integrations.md").read_text()


def test_every_command_is_documented():
    for feature in commands.FEATURES:
        assert f"| `{feature}` |" in DOC, feature


def test_the_recorded_entities_are_what_discovery_makes_today():
    """The table from the live HA run lists exactly the current single-camera entities."""
    recorded = set(re.findall(r"^\s*\| `([a-z_]+\.[a-z0-9_]+)` \| `(segedge_[^`]+)` \|", DOC, re.M))
    msgs = ha.discovery("segedge", "cam-01", [ha.CameraInfo("cam-01")], "0.1.0",
                        ha.DiscoverySettings(enabled=True, overlay_interval_s=2.0))
    made = {(f"{m.topic.split('/')[1]}.{m.config()['object_id'].replace('-', '_')}",
             m.config()["unique_id"]) for m in msgs}
    assert recorded == made


def test_example_config_is_accepted_by_the_agent():
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "--config",
                           "examples/home-assistant.toml", "--check-config"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config OK" in proc.stdout + proc.stderr


def test_docs_sections_named_in_the_code_exist():
    """A docstring or help text that sends the reader to ``docs/X.md, "Section"`` or
    ``docs/X.md#anchor`` names a heading that is there (stale pointers fail here)."""
    headings = {}
    for doc in (ROOT / "docs").glob("*.md"):
        titles = re.findall(r"^#+ (.+)$", doc.read_text(), re.M)
        anchors = {re.sub(r"[^a-z0-9 -]", "", t.lower()).replace(" ", "-") for t in titles}
        headings[doc.name] = (titles, anchors)
    refs = []
    for path in [*ROOT.glob("edge_agent/**/*.py"), *ROOT.glob("build_models/*.py")]:
        text = path.read_text()
        refs += [(path, m[0], m[1], "") for m in
                 re.findall(r'docs/([a-z_-]+\.md),? \\?"([A-Z][^"\\]+)\\?"', text)]
        refs += [(path, m[0], "", m[1]) for m in re.findall(r"docs/([a-z_-]+\.md)#([a-z0-9-]+)",
                                                            text)]
    assert refs, "the pattern finds the code's pointers"
    for path, doc, section, anchor in refs:
        assert doc in headings, f"{path.name}: docs/{doc} does not exist"
        titles, anchors = headings[doc]
        if section:
            assert any(t.startswith(section) for t in titles), f"{path.name}: {doc} {section!r}"
        if anchor:
            assert anchor in anchors, f"{path.name}: {doc}#{anchor}"


def test_the_agents_module_table_is_the_tree():
    """docs/agent.md "Inside" lists every module of edge_agent/, and nothing else."""
    doc = (ROOT / "docs" / "agent.md").read_text()
    rows = re.findall(r"^\| (—|`[a-z_]+/`) \| (.+?) \|", doc, re.M)
    listed = set()
    for room, cell in rows:
        folder = "" if room == "—" else room.strip("`")
        listed |= {folder + name for name in re.findall(r"`([a-z_/]+\.py)`", cell)}
    tree = {str(p.relative_to(ROOT / "edge_agent")) for p in (ROOT / "edge_agent").rglob("*.py")
            if p.name != "__init__.py" or p.parent.name == "config"}
    tree.discard("__init__.py")
    assert listed == tree, (sorted(tree - listed), sorted(listed - tree))


def test_the_readme_names_the_bundle_the_demo_runs():
    """The main command's paragraph names the bundle ``scripts/demo.sh`` picks (the newest
    committed one): a new demo bundle with a stale README fails here (it named 2.0.0, gone
    from the tree, while the demo ran 3.1.0)."""
    from tools.demo import find_bundle

    readme = (ROOT / "README.md").read_text()
    main = readme[readme.index("`scripts/demo.sh` installs"):readme.index("To make it again")]
    named = re.search(r"committed demo bundle `(demo/models/[^`]+)`", " ".join(main.split()))
    assert named, "the main command's paragraph no longer names its bundle"
    assert ROOT / named.group(1) == find_bundle(ROOT / "demo" / "models")


def test_the_readmes_model_figures_are_the_committed_bundles():
    """The demo model's accuracy in the README is what the committed bundle's manifest
    records (rounded as printed): a re-trained bundle with a stale README fails here."""
    import json

    readme = (ROOT / "README.md").read_text()
    bullet = readme[readme.index("- **Demo model**"):readme.index("- **Agent end to end**")]
    name, version = re.search(r"`([a-z0-9-]+)` (\d+\.\d+\.\d+)", bullet).groups()
    manifest = json.loads((ROOT / "demo" / "models" / name / version / "manifest.json")
                          .read_text())
    got = manifest["evaluation"]["metrics"]
    fp32, int8 = got["FP32"], got["INT8"]
    figures = re.search(r"pet IoU (\d\.\d+) / (\d\.\d+), pet Dice (\d\.\d+) /\s+(\d\.\d+)\*\*, "
                        r"pixel accuracy (\d\.\d+) / (\d\.\d+)", bullet)
    assert figures, "the demo bullet's figures are not where this test reads them"
    printed = [float(x) for x in figures.groups()]
    expected = [fp32["fg_iou"], int8["fg_iou"], fp32["fg_dice"], int8["fg_dice"],
                fp32["dice"], int8["dice"]]
    for shown, true in zip(printed, expected):
        digits = len(str(shown).split(".")[1])
        assert round(true, digits) == shown, (printed, expected)
    assert manifest["evaluation"]["images"] == 97 and "97\n  test images" in bullet


def test_the_demo_model_card_holds_the_readmes_figures():
    """The README's linked page says the same: the side-by-side speed both quote is the
    committed record (docs/benchmarks/demo-models.json, written by
    benchmarks/bench_bundles.py); the card's accuracy rows are checked against the
    manifest in tests/build_models/test_demo_assets.py."""
    import json

    readme = (ROOT / "README.md").read_text()
    card = (ROOT / "demo" / "README.md").read_text()
    bullet = readme[readme.index("- **Demo model**"):readme.index("- **Agent end to end**")]
    name, version = re.search(r"`([a-z0-9-]+)` (\d+\.\d+\.\d+)", bullet).groups()
    manifest = json.loads((ROOT / "demo" / "models" / name / version / "manifest.json")
                          .read_text())
    assert f"## models/{name}/{version}" in card and manifest["version"] == version
    # the card's accuracy rows: tests/build_models/test_demo_assets.py
    record = json.loads((ROOT / "docs" / "benchmarks" / "demo-models.json").read_text())
    assert list(record["models"])[0] == version
    new = record["summary"][version]
    quoted = re.search(r"(\d+\.\d) vs (\d+\.\d)\s+inferences/s \((\d+\.\d+\.\d+)", bullet)
    assert quoted, "the demo bullet's speed is not where this test reads it"
    assert float(quoted.group(1)) == new["fps_median"]
    assert float(quoted.group(2)) == record["summary"][quoted.group(3)]["fps_median"]
    assert (f"| {version} INT8 | {new['fps_median']} fps ({new['fps_best']}) | 1.00 | "
            f"{new['latency_median_ms']} ms |") in card


def test_the_readmes_agent_figures_are_the_committed_records():
    """The README's end-to-end figures (ratio to the limit, fps, the 30 fps camera's p50)
    are those of docs/benchmarks/agent-*-counted.json, which benchmarks/bench_agent.py
    wrote: a re-run that moves them has to move the README too."""
    import json

    readme = (ROOT / "README.md").read_text()
    bullet = " ".join(readme[readme.index("- **Agent end to end**"):
                             readme.index("- **Many cameras")].split())
    demo, seed = (json.loads((ROOT / "docs" / "benchmarks" / f"agent-{m}-counted.json")
                             .read_text()) for m in ("3.1.0", "seed"))
    assert f"--bundle demo/models/{demo['model']['name']}/{demo['model']['version']}" in bullet
    this, before = demo["summary"]["this"], demo["summary"]["before-16f063f"]
    assert f"**{this['ratio_vs_limit']:.3f}** of that limit on the demo model 3.1.0" in bullet
    assert f"({this['fps_inference']:.0f} fps against {demo['limit_fps']:.0f};" in bullet
    assert f"before: {before['ratio_vs_limit']:.3f};" in bullet
    assert ("the goal was 0.90, not met" in bullet) == (this["ratio_vs_limit"] < 0.90)
    s_this, s_before = seed["summary"]["this"], seed["summary"]["before-16f063f"]
    assert f"**{s_this['ratio_vs_limit']:.3f}** on the origin's FPN-resnet34" in bullet
    assert (f"({s_this['fps_inference']:.0f} of {seed['limit_fps']:.0f} fps; before: "
            f"{s_before['ratio_vs_limit']:.3f})") in bullet
    cam = demo["camera"]
    assert (f"p50 is **{cam['this']['latency_p50_ms']:.1f} ms** against `benchmark_app`'s "
            f"latency-hint median of {cam['benchmark_app_median_ms']:.1f} ms (before: "
            f"{cam['before-16f063f']['latency_p50_ms']:.1f} ms;") in bullet
    over = cam["this"]["latency_p50_ms"] - cam["benchmark_app_median_ms"] - 3.0
    assert (f"{over:.2f} ms over it on this run, not met" in bullet) == (over > 0)
    s_cam = seed["camera"]
    assert (f"the origin's model {s_cam['this']['latency_p50_ms']:.1f} vs "
            f"{s_cam['benchmark_app_median_ms']:.1f} ms (before: "
            f"{s_cam['before-16f063f']['latency_p50_ms']:.1f})") in bullet


def test_the_readmes_camera_figures_are_the_committed_record():
    """The many-cameras bullet quotes docs/benchmarks/cameras.json (bench_cameras.py)."""
    import json

    readme = " ".join((ROOT / "README.md").read_text().split())
    bullet = readme[readme.index("- **Many cameras, one model**"):]
    bullet = bullet[:bullet.index("Frames from other devices")]
    record = json.loads((ROOT / "docs" / "benchmarks" / "cameras.json").read_text())
    assert f"demo model {Path(record['bundle']).name}," in bullet
    totals = [row["total_inferred_fps"] for row in record["fairness"]]
    assert "totals " + ", ".join(f"{t:.0f}" for t in totals) + " fps" in bullet
    assert f"**{totals[-1] / totals[0]:.2f}** of one camera's" in bullet
    served = record["served"]
    assert f"**{'four' if served['30'] == 4 else served['30']} 30 fps cameras**" in bullet
    assert f"(or {'ten' if served['15'] == 10 else served['15']} at 15 fps)" in bullet
    row = next(r for r in record["capacity"]["30"] if r["cameras"] == served["30"])
    p50 = [c["latency_p50_ms"] for c in row["per_camera"].values()]
    assert f"p50 {min(p50):.0f}–{max(p50):.0f} ms" in bullet
