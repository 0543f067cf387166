"""Replacing a file atomically, with the permissions a user expects and through symlinks.

tempfile.mkstemp creates its file 0600 whatever the umask, so a result file written through it
and renamed into place would be private even on a group-shared results folder, and renaming over
a symlink replaces the link with a plain file. `replacing` avoids both.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def replacing(path: Path, binary: bool = False) -> Iterator[IO]:
    """A handle to a new file that replaces `path` when the block ends without an error.

    Readers see the old file or the new one, never half of it (written beside the target, synced,
    then os.replace). A symlink is followed: its target is replaced and the link stays. The new
    file keeps the mode of the file it replaces; a new file gets the umask's default, as open()
    would give it.
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    # mode 0666 and O_EXCL: the umask applies, and no other writer's file is ever reused
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(
            descriptor, "wb" if binary else "w", newline=None if binary else ""
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
