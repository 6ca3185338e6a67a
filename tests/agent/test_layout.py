"""The agent's tree reads as its design: rooms by concern, imports only downhill.

Static (AST) checks, no imports: the top level holds only the entry point, the
composition root and the camera registry; every room says its job in a docstring; no
import cycles between modules; ``protocol`` needs neither paho nor openvino (consumers
import it), and ``client`` reaches nothing of the device runtime.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "edge_agent"
TOP_LEVEL = {"__init__.py", "__main__.py", "app.py", "cameras.py"}
ROOMS = {"config", "sources", "inference", "bundle", "protocol", "mqtt", "control", "health",
         "client", "quality"}
DEVICE_RUNTIME = {"sources", "inference", "mqtt", "control", "health", "quality"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path, name: str) -> Set[str]:
    """Every module this file imports (absolute or relative), by dotted name."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def graph() -> Dict[str, Set[str]]:
    mods = modules()
    out: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        out[name] = {m for m in imports_of(path, name) if m in mods and m != name}
    return out


def reachable(start: str, edges: Dict[str, Set[str]]) -> Set[str]:
    seen: Set[str] = set()
    todo: List[str] = [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def third_party(names: Set[str]) -> Set[str]:
    return {n.split(".")[0] for n in names if not n.startswith("edge_agent")}


def test_top_level_holds_only_entry_point_root_and_registry():
    files = {p.name for p in PKG.glob("*.py")}
    dirs = {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files == TOP_LEVEL
    assert dirs == ROOMS


def test_each_room_says_its_job():
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((PKG / room / "__init__.py").read_text()))
        assert doc and len(doc) > 40, f"edge_agent/{room}/__init__.py needs a docstring"


def test_no_import_cycles():
    edges = graph()
    cycles = sorted(name for name in edges if name in reachable(name, edges))
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_protocol_needs_neither_paho_nor_openvino():
    edges, mods = graph(), modules()
    for name in [m for m in mods if m.startswith("edge_agent.protocol")]:
        used = {name} | reachable(name, edges)
        outside = set().union(*(third_party(imports_of(mods[m], m)) for m in used))
        assert not outside & {"paho", "openvino"}, (name, sorted(outside))
        assert all(m.startswith("edge_agent.protocol") or m == "edge_agent" for m in used), (
            name, sorted(used))


def test_client_reaches_nothing_of_the_device_runtime():
    edges, mods = graph(), modules()
    for name in [m for m in mods if m.startswith("edge_agent.client")]:
        rooms = {m.split(".")[1] for m in reachable(name, edges) if m.count(".") >= 1}
        assert not rooms & DEVICE_RUNTIME, (name, sorted(rooms & DEVICE_RUNTIME))


def test_cycle_detection_sees_a_cycle():
    """The checker itself: a two-module cycle is found (so a pass above means something)."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert "a" in reachable("a", edges) and "c" not in reachable("c", edges)


def test_no_private_attribute_of_paho_is_used():
    """paho's private state (``client._thread``, ``_sock``, ...) changes between releases:
    the agent reaches paho through public methods only."""
    import re

    for path in PKG.rglob("*.py"):
        text = path.read_text()
        if "paho" not in text:
            continue
        hits = re.findall(r"\bclient\._[a-z]\w*", text)
        assert hits == [], f"{path.relative_to(ROOT)}: {sorted(set(hits))}"
