"""Writing a folder through a staging folder: nothing half-written is ever in place, a failure
removes what it wrote, a full disk is one ``OSError(ENOSPC)`` whatever the writer called it, and
only the entries the writer owns are replaced (nothing else in the folder is touched).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import CheckpointError, MoLoRAError

_DISK_FULL_WORDS = ("no space left", "storagefull", "disk quota", "unexpected pos")


def as_disk_full(error: BaseException, path: Path) -> OSError | None:
    """``error`` from a write under ``path`` as ``OSError(ENOSPC)`` when the disk is full, else None.
    torch.save reports a full disk as "RuntimeError: ... unexpected pos", safetensors as an IoError
    string: both are recognised, and so is a disk with (almost) no space left after the failure."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return error
    text = str(error).lower()
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
    except OSError:
        free = None
    if any(w in text for w in _DISK_FULL_WORDS) or (free is not None and free < 1 << 20):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


@contextmanager
def partial_folder(tmp: Path, target: Path | None = None):
    """Writes into ``tmp`` (a folder renamed into place afterwards): a failure or an interrupt removes
    it, and a full disk comes out as ``OSError(ENOSPC)`` whatever the writer called it (naming
    ``target``, the folder being written, when given)."""
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = as_disk_full(e, tmp) if isinstance(e, Exception) and not isinstance(e, MoLoRAError) else None
        if full is None:
            raise
        if target is not None:
            full = OSError(full.errno, full.strerror, str(target))
        if full is e:
            raise
        raise full from e


def is_leftover(entry: Path) -> bool:
    """A staging folder of molora's: a write under way, or one a killed process left behind."""
    return entry.is_dir() and entry.name.startswith((".molora-tmp-", ".molora-old-"))


def check_folder_path(directory: Path) -> None:
    """``directory`` can be a folder: it is not a file, and no folder above it is a file."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError("is a file, not a folder", str(directory))
    for parent in directory.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CheckpointError(f"{parent} is a file, not a folder: choose another path", str(directory))
            return


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def _open_up(tmp: Path) -> None:
    """The modes a plain mkdir / open would give (0755 / 0644 under the usual umask 022): mkdtemp's
    private 0700 must not survive the rename, or a serving account cannot read the checkpoint."""
    mask = _umask()
    for path in [tmp, *tmp.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _entries(directory: Path) -> dict[str, int]:
    """Name -> inode of each entry of ``directory`` (staging folders left out): what ``_commit`` compares
    with the folder as it was when the write began."""
    found = {}
    for entry in directory.iterdir() if directory.is_dir() else ():
        try:
            if not is_leftover(entry):
                found[entry.name] = entry.stat(follow_symlinks=False).st_ino
        except FileNotFoundError:  # another writer's folder, removed meanwhile
            pass
    return found


def _commit(tmp: Path, directory: Path, owned: Callable[[Path], bool], before: dict[str, int]) -> None:
    """Put ``tmp``'s entries in ``directory``: an absent folder in one rename; else the entries it owns
    move aside (and are deleted once the new ones are in), the new ones move in, the rest stays. An
    entry written since the write began (``before``: the folder then) means another process wrote
    this folder meanwhile: nothing is moved in, so neither silently replaces the other's files."""
    changed = sorted(n for n, ino in _entries(directory).items() if before.get(n) != ino)
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise CheckpointError(f"another process wrote {', '.join(changed[:3])}{more} into this folder while molora "
                              "was writing it; nothing was moved in: check what is there now, then run again",
                              str(directory))
    if not directory.exists():
        os.replace(tmp, directory)
        return
    new = {p.name for p in tmp.iterdir()}
    for entry in directory.iterdir():
        if entry.name in new and not owned(entry):
            raise CheckpointError(f"{entry.name} is in the way: it holds files molora did not write (move it "
                                  "away or choose another folder)", str(directory))
    old = Path(tempfile.mkdtemp(prefix=".molora-old-", dir=directory))
    try:
        for entry in list(directory.iterdir()):
            if entry not in (tmp, old) and owned(entry):
                os.replace(entry, old / entry.name)
        for name in new:
            os.replace(tmp / name, directory / name)
    except BaseException:  # put the old entries back (the new ones go with the staging folder)
        for entry in old.iterdir():
            if (directory / entry.name).exists():
                os.replace(directory / entry.name, tmp / entry.name)
            os.replace(entry, directory / entry.name)
        old.rmdir()
        raise
    tmp.rmdir()
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(directory: Path, owned: Callable[[Path], bool]):
    """Yield a staging folder to write ``directory``'s new entries into; on success they replace the
    entries of ``directory`` that ``owned(entry)`` accepts (those the new write lacks are removed too:
    stale shards of an earlier save), and everything else in ``directory`` is left as it is. A failure
    (or an interrupt) removes the staging folder and leaves ``directory`` as it was."""
    directory = Path(directory)
    check_folder_path(directory)
    before = _entries(directory)
    try:
        if directory.is_dir():  # stage inside it: the same file system, so every move is a rename
            tmp = Path(tempfile.mkdtemp(prefix=".molora-tmp-", dir=directory))
        else:
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    except OSError as e:  # name the folder asked for, not the random staging name
        raise OSError(e.errno, e.strerror, str(directory)) from e
    with partial_folder(tmp, directory):
        yield tmp
        _open_up(tmp)
        _commit(tmp, directory, owned, before)
