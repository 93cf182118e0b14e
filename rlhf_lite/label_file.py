"""The label store's file: append-only JSON Lines that stay whole whatever happens to them.

``LabelStore`` (``label_store.py``) says what a label event is; ``LabelFile`` keeps the bytes
safe. What users and machines do to a file, and what it does about each:

- a kill mid-write leaves the last line cut off: it is moved to ``<file>.setaside`` (a line cut
  off was never acknowledged, so nothing acknowledged is lost); if the file or its folder is
  read-only, the line is only left out, and nothing is written;
- a reader can find a line that a writer is still writing: it mends a cut line only while it
  holds the lock itself, after reading the file again (what it saw may have been finished);
- a full disk fails a write half-way: the half line is cut back out before the error is raised,
  so the next label never lands on it;
- a second writer, through any name, symlink or hard link, finds the file itself locked;
- a file replaced under the writer (an editor that saves by rename) or changed in place is read
  again before the next write, never appended to blind; a file deleted under it is an error;
- a failure to lock leaves nothing half-open: the next call tries again from scratch.
"""
from __future__ import annotations

import errno
import logging
import os
import time
import warnings

_WRITERS: dict[tuple, "LabelFile"] = {}   # (device, inode) -> this process's writer of that file
_LOCK_WAIT = 0.5   # seconds a writer waits for a reader that is mending the file's last line
logger = logging.getLogger("rlhf_lite")


class LabelStoreLockedError(RuntimeError):
    """Another ``LabelStore`` is writing this file."""


class LabelStoreWriteError(OSError):
    """A write that failed (disk full, no permission, the file gone): none of it is in the file."""


class LabelStoreWarning(UserWarning):
    """Something in a label file was set aside or read again (the message says what and why)."""


try:
    import fcntl

    def _try_lock(fd) -> bool:
        """An exclusive lock on the file itself (its inode: every name and link of it)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _unlock(fd) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # Windows: a byte-range lock far past the end (locked bytes cannot be read)
    import msvcrt

    def _try_lock(fd) -> bool:
        try:
            os.lseek(fd, 0x7FFFFFF0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd) -> None:
        os.lseek(fd, 0x7FFFFFF0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _lock_holder(path: str) -> str:
    """'process N' that holds the lock on ``path``: from /proc/locks (Linux), else from the pid
    the writer left in ``<file>.lock`` if that process lives; else 'another process'."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if "FLOCK" in fields and "->" not in fields and len(fields) > 5 and \
                        fields[5].rsplit(":", 1)[-1] == str(inode):
                    return f"process {fields[4]}"
    except (OSError, IndexError):
        pass
    try:
        with open(os.path.realpath(path) + ".lock") as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)
        return f"process {pid}"
    except (OSError, ValueError, IndexError):
        return "another process"


def _fsync_folder(folder: str) -> None:
    """Make a new or renamed directory entry durable (not possible everywhere: then skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class LabelFile:
    """One label file: read whole by anyone, appended to by one writer at a time.

    parse(data) reads the file's bytes into the store's events and returns ``(cut, ends_open)``:
    cut = (tail, size, line) when the last line is cut off mid-write, else None; ends_open = the
    last line is complete but has no "\\n" yet. ``set_aside``: the reports of cut lines.
    """

    def __init__(self, path, parse):
        self.path = os.path.abspath(os.fspath(path))   # the same file after an os.chdir
        self.parse = parse
        self.set_aside: list[str] = []
        self.fd = self.key = None
        self.size = 0            # the file's size after our last write; None: stray bytes after it
        self.superseded = False

    # --- reading ------------------------------------------------------------------------------

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def load(self) -> None:
        """Read the file; mend a cut last line if nobody may be writing it (see the docstring)."""
        cut, ends_open = self.parse(self.read())
        if self.fd is not None:   # we hold the lock: nobody is writing that line
            if cut is not None:
                self._set_aside(*cut)
            self.size = os.fstat(self.fd).st_size
            if ends_open:   # a complete last line without its "\n": end it before appending
                self.append(b"\n")
            return
        if cut is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:   # a writer holding the lock may be writing that line right now: then it is theirs
            if _try_lock(fd):
                try:   # read again under the lock: the line may have been finished since
                    cut, _ = self.parse(self.read())
                    if cut is not None:
                        self._set_aside(*cut)
                finally:
                    _unlock(fd)
        finally:
            os.close(fd)

    def _set_aside(self, tail: bytes, size: int, lineno: int) -> None:
        """Move a cut-off last line to ``<file>.setaside``. The writer cuts it out even when no
        copy can be made (it was never acknowledged); a reader that cannot write leaves it."""
        aside = self.path + ".setaside"
        report = (f"{self.path}:{lineno}: the last line is cut off mid-write ({len(tail)} bytes): "
                  "a writer stopped before finishing it (killed, crashed or out of disk space)")
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as e:
            fd = None
            report += f"; the file is read-only ({e.strerror}), so the line is only left out"
        if fd is not None:
            try:
                try:
                    with open(aside, "ab") as f:
                        f.write(tail + b"\n")
                        f.flush()
                        os.fsync(f.fileno())
                    cut = True
                    report += f"; it is set aside in {aside} and the store goes on without it"
                except OSError as e:
                    cut = self.fd is not None   # the writer must mend; a reader may leave it
                    report += (f"; {aside} cannot be written ({e.strerror}), so the line is "
                               + ("dropped" if cut else "only left out"))
                if cut:
                    os.ftruncate(fd, size - len(tail))
                    os.fsync(fd)
            finally:
                os.close(fd)
        self.set_aside.append(report)
        warnings.warn(report, LabelStoreWarning, stacklevel=5)

    # --- writing ------------------------------------------------------------------------------

    def lock(self) -> None:
        """Become the file's one writer (then read it again, under the lock)."""
        if self.fd is not None:
            return
        if self.superseded:
            raise LabelStoreLockedError(f"{self.path}: a newer LabelStore on this file took over "
                                        "in this process; write through that one")
        folder = os.path.dirname(self.path)
        created = not os.path.exists(self.path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise LabelStoreWriteError(
                e.errno, f"{self.path}: cannot write the label file ({e.strerror}). Make it and "
                "its folder writable, or label into another file; reading needs no write access"
            ) from None
        try:
            stat = os.fstat(fd)
            key = (stat.st_dev, stat.st_ino)
            older = _WRITERS.get(key)
            if older is not None and older is not self:
                older.close()
                older.superseded = True
                # a notebook cell run twice does this: nothing is wrong, so no warning
                logger.info("%s: this LabelStore takes over from an older one on the same file "
                            "in this process; the older one now refuses to write", self.path)
            deadline = time.monotonic() + _LOCK_WAIT
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise LabelStoreLockedError(
                        f"{self.path} is being written by another LabelStore "
                        f"({_lock_holder(self.path)}). Close that one (store.close(), or shut down "
                        "its notebook's kernel) or label into another file. Reading needs no "
                        "lock: LabelStore(path).comparisons() works meanwhile.")
                time.sleep(0.02)
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.key = fd, key
        _WRITERS[key] = self
        try:   # who writes, for the error message of a second writer where /proc/locks is missing
            with open(os.path.realpath(self.path) + ".lock", "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError:
            pass
        if created:
            _fsync_folder(folder)
        try:
            self.load()   # what was written before we held the lock; mends a cut last line
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop writing and release the lock (the end of the process does it too)."""
        if self.fd is not None:
            os.close(self.fd)   # closing the file releases its lock
            self.fd = None
        if self.key is not None and _WRITERS.get(self.key) is self:
            del _WRITERS[self.key]

    def still_ours(self) -> bool:
        """Does ``self.path`` still name the file we hold open and locked?"""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (stat.st_dev, stat.st_ino) == self.key

    def prepare_write(self) -> None:
        """Lock; then if the file was replaced (an editor saving by rename), lock and read the
        new one; if it was changed in place, read it again. Never append blind."""
        self.lock()
        if not self.still_ours():
            self.close()
            if not os.path.exists(self.path):
                raise LabelStoreWriteError(
                    errno.ENOENT, f"{self.path} was deleted or moved while this store was writing "
                    "it; nothing was written. To start a new file there, make a new LabelStore")
            warnings.warn(f"{self.path} was replaced on disk since this store opened it (an editor "
                          "that saves by writing a new file?); the store reads the new file and "
                          "writes there", LabelStoreWarning, stacklevel=4)
            self.lock()
        elif self.size is None:   # our own failed write left bytes we could not cut back out
            self.load()
        elif os.fstat(self.fd).st_size != self.size:
            warnings.warn(f"{self.path} was changed by another program while this store held it; "
                          "the store reads it again before writing", LabelStoreWarning,
                          stacklevel=4)
            self.load()

    def append(self, data: bytes) -> None:
        """Write ``data`` at the end and fsync; on failure, cut the file back to where it was."""
        start = self.size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except OSError as error:
            try:
                os.ftruncate(self.fd, start)
                os.fsync(self.fd)
                state = "the file is as it was before"
            except OSError:   # the next write finds the stray bytes and sets them aside
                self.size = None
                state = "what was written of it is set aside at the next write"
            raise LabelStoreWriteError(
                error.errno, f"{self.path}: not saved ({error.strerror}); {state}. Free some "
                "disk space (or fix the error) and label again") from error
        self.size = start + len(data)


def close_all() -> None:
    for label_file in list(_WRITERS.values()):
        label_file.close()
