"""Export the protocol's JSON Schema (one definition per channel) for the browser code.

``python -m shared.schema`` prints it; ``python -m shared.schema --write`` refreshes the
copy served to browsers at ``hq_console/static/protocol.schema.json`` (a test checks that
the copy is current).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from shared.protocol import PROTOCOL_VERSION
from shared.wire import CHANNELS

SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent / "hq_console" / "static" / "protocol.schema.json"
)


def protocol_schema() -> dict[str, Any]:
    channels = {name: adapter.json_schema() for name, adapter in CHANNELS.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Ekichika signaling protocol",
        "protocol_version": PROTOCOL_VERSION,
        "channels": channels,
    }


def render() -> str:
    return json.dumps(protocol_schema(), ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def main() -> None:
    text = render()
    if "--write" in sys.argv[1:]:
        SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
        SCHEMA_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SCHEMA_PATH}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
