"""Files that hold secrets (the chutes config with its hotkey seed, the API key): written atomically
with mode 600, after a timestamped backup of what was there.

Standard library only: setup.sh runs it before any venv exists (`python3 tools/private_files.py backup FILE`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def backup(path: Path) -> Path | None:
    """Copy `path` to `path.bak.<YYYYmmdd-HHMMSS>[.n]` (mode 600, never overwriting); None if absent."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.bak.{stamp}")
    n = 0
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.bak.{stamp}.{n}")
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
        shutil.copyfileobj(src, out)
    return dest


def write_private(path: Path, text: str) -> Path | None:
    """Atomically replace `path` with `text` (mode 600), backing up what was there; returns the backup."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    saved = backup(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: mode 600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return saved


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "backup":
        print("usage: private_files.py backup FILE", file=sys.stderr)
        return 2
    path = Path(argv[1])
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 1
    print(backup(path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
