"""Messages shown to users never carry the server's absolute paths (a job's error, as stored and served)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

_ABSOLUTE = re.compile(r"(?<![\w.])/(?:tmp|home|work|root|var|usr|opt|srv|data|app|mnt|private)/[^\s'\"),;]*")


def scrub_paths(message: str, roots: Iterable[Path]) -> str:
    """Paths under `roots` (the data dir, work dir, artifacts) become relative to them; any other absolute path
    under a usual system folder becomes '<path>'."""
    for root in sorted({str(Path(r).resolve()) for r in roots}, key=len, reverse=True):
        if root != "/":
            message = message.replace(root + "/", "").replace(root, "<data>")
    return _ABSOLUTE.sub("<path>", message)
