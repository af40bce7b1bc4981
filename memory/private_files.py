"""Data files holding a person's memory or conversations are readable by their owner only: directories
0700, files 0600 (SQLite's -wal/-shm/-journal files inherit the database file's mode)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_SIDECARS = ("-wal", "-shm", "-journal")


def _chmod(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:  # removed meanwhile (a forget in another process)
        pass
    except PermissionError:  # not ours (a shared directory): leave it, the files inside are still 0600
        pass


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; an existing directory is set to 0700."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _chmod(path, DIR_MODE)
    return path


def private_sqlite(path: Path) -> Path:
    """Create the SQLite file empty with mode 0600 before SQLite opens it (so its WAL and SHM are born
    0600 too); an existing file and its sidecar files are set to 0600."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
        os.close(fd)
    except FileExistsError:
        pass
    for p in (path, *(path.with_name(path.name + s) for s in _SIDECARS)):
        if p.exists():
            _chmod(p, FILE_MODE)
    return path


def private_tree(root: Path, skip: set[str] | None = None) -> set[str]:
    """Set directories under ``root`` to 0700 and files to 0600; returns the top-level names handled
    (pass them back as ``skip`` to handle only what is new, e.g. a vector index directory chroma just made)."""
    root = Path(root)
    done = set(skip or ())
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return done
    for entry in entries:
        if entry.name in done:
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _chmod(path, DIR_MODE)
            for sub, dirs, files in os.walk(path):
                for d in dirs:
                    _chmod(Path(sub) / d, DIR_MODE)
                for f in files:
                    _chmod(Path(sub) / f, FILE_MODE)
        elif entry.is_file(follow_symlinks=False):
            _chmod(path, FILE_MODE)
        done.add(entry.name)
    return done
