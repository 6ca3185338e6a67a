"""The key table of docs/config.md, made from the dataclasses' metadata (a test keeps
the two equal)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, List, Tuple

from edge_agent.config.settings import (
    CAMERA_OUTPUT_KEYS,
    CAMERA_SAMPLES_KEYS,
    CAMERA_SOURCE_KEYS,
    ID_RULE,
    OutputConfig,
    SamplesConfig,
    SourceConfig,
    _keys,
    _range_text,
)


def describe() -> List[Tuple[str, str, Any, str]]:
    """(key, type, default, help) for every key: the docs' key table is made from these."""
    return [(key, f.type, getattr(cls(), f.name), f.metadata["help"])
            for key, cls, f in _keys()]


def key_table() -> str:
    """The Markdown key table of docs/config.md (a test keeps the two equal)."""
    types = {"List[str]": "list"}
    lines = ["| key | type | default | range | meaning |", "|---|---|---|---|---|"]
    for key, _cls, f in _keys():
        default = json.dumps(getattr(_cls(), f.name))
        rng = f.metadata.get("range")
        lines.append(f"| `{key}` | {types.get(f.type, f.type)} | `{default}` | "
                     f"{_range_text(rng, f.type == 'int') if rng else ''} | {f.metadata['help']} |")
    lines.append("| `cameras[].id` | str | (required) |  | the camera's id in topics "
                 "(`<prefix>/<id>/...`): unique, not the `device_id` unless it is the only "
                 f"camera; {ID_RULE} |")
    for key in CAMERA_SOURCE_KEYS + CAMERA_OUTPUT_KEYS:
        section = "source" if key in CAMERA_SOURCE_KEYS else "output"
        cls = SourceConfig if section == "source" else OutputConfig
        f = next(x for x in fields(cls) if x.name == key)
        default = "(required)" if key == "uri" else f"`{section}.{key}`"
        lines.append(f"| `cameras[].{key}` | {types.get(f.type, f.type)} | {default} |  | as "
                     f"`{section}.{key}`, for this camera |")
    for key in CAMERA_SAMPLES_KEYS:
        f = next(x for x in fields(SamplesConfig) if x.name == key)
        lines.append(f"| `cameras[].samples.{key}` | {f.type} | `samples.{key}` |  | as "
                     f"`samples.{key}`, for this camera |")
    return "\n".join(lines) + "\n"
