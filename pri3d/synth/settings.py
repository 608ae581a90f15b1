"""The settings file every generator keeps in its output folder.

A re-run adds to a folder (more scenes or drives) or skips what is finished, so it must use the
settings the existing files were made with: a re-run with others is refused, naming the keys that differ.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def check_and_record_settings(
    path: Path, settings: dict, what: str, may_change: Iterable[str] = (), defaults: dict | None = None
) -> None:
    """Refuse to add to ``path``'s folder when its recorded settings differ from ``settings`` in a key
    outside ``may_change`` (e.g. the number of scenes); then record ``settings`` (JSON) at ``path``.

    ``what`` names the data in the message; ``defaults`` gives keys that an older file lacks the
    values they had before the key existed.
    """
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
    if path.exists():
        previous = json.loads(path.read_text())
        defaults = json.loads(json.dumps(defaults or {}))
        skip = set(may_change)
        changed = sorted(
            k for k in settings if k not in skip and previous.get(k, defaults.get(k)) != settings[k]
        )
        if changed:
            raise ValueError(
                f"{path.parent} holds {what} generated with other settings "
                f"({', '.join(f'{k}={previous.get(k)!r}' for k in changed)}); use another --out or the same options"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n")
