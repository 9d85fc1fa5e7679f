"""JSON Schema export of every event, for clients written in other languages."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import EVENT_TYPES


def export_json_schemas(directory: Path) -> list[Path]:
    """Write `<event_type>.schema.json` per event into `directory`; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type in EVENT_TYPES:
        name = event_type.model_fields["event_type"].default
        schema = event_type.model_json_schema(mode="validation")
        schema["$id"] = f"https://flywheel.dev/schemas/{name}.schema.json"
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
