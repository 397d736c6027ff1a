"""What identifies a file's current content, for the watchers that re-read a file when it
changes (the mapping file, the token file)."""

from __future__ import annotations

from pathlib import Path

FileKey = tuple[int, int, int, int, int]


def file_key(path: Path) -> FileKey | None:
    """Inode, size, mode, mtime and ctime (None if the file cannot be stat'ed).

    ctime moves on a ``chmod`` or a ``cp -p`` that keeps the old mtime, so those count as
    changes too; the inode moves when a Kubernetes ConfigMap update swaps a symlink.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
