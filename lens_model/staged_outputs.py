"""Output files written so that a failed run leaves the output folder as it was."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from lens_model.errors import InputError
from lens_model.image_io import display_path


class StagedOutputs:
    """Files for ``folder``, staged in a hidden folder inside it and renamed into place by :meth:`commit`.

    Each file is written, flushed to disk and read back; a write error or a file that does not read
    back byte for byte (a full disk can leave a 0-byte file with no error from some writers) raises
    ``OSError``. A file that a library writes itself (a video) is written at :meth:`staging_path`
    and checked and flushed by :meth:`adopt`. Nothing in ``folder`` changes before :meth:`commit`,
    which renames the checked files over the previous ones (``os.replace``, atomic for each file: the
    staging folder is on the same file system). A name with a folder (``masks/000000.png``) stages that
    whole folder, and :meth:`commit` replaces the previous folder as a whole, so no file of an earlier
    run is left in it (two renames: the old folder moves into the staging folder, the new one into
    place). The staging folder is removed on leaving the ``with`` block, whatever happened, and so is
    ``folder`` itself if this run created it and committed nothing.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._staging: Path | None = None
        self._names: list[str] = []
        self._created = False
        self._committed = False

    def __enter__(self) -> StagedOutputs:
        self._created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output folder {display_path(self.folder)}: {exc.strerror}") from None
        try:
            self._staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.folder))
        except OSError as exc:
            raise InputError(f"cannot write into output folder {display_path(self.folder)}: {exc.strerror}") from None
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        shutil.rmtree(self._staging, ignore_errors=True)
        if self._created and not self._committed:
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def write(self, name: str, data: bytes) -> None:
        try:
            path = self.staging_path(name)
            write_durably(path, data)
            written = path.read_bytes()
        except OSError as exc:
            raise OSError(f"could not write {display_path(self.folder / name)}: {exc.strerror or exc}") from exc
        if written != data:
            raise OSError(f"could not write {display_path(self.folder / name)}: {len(written)} of {len(data)} "
                          "bytes read back (is the disk full?)")
        self._names.append(name)

    def staging_path(self, name: str) -> Path:
        """Where output ``name`` is staged, for a writer that takes a path; then call :meth:`adopt`."""
        path = self._staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def adopt(self, name: str) -> None:
        """Take the file a library wrote at ``staging_path(name)`` into the outputs, flushed to disk;
        a missing or empty one raises ``OSError``."""
        path = self._staging / name
        try:
            with open(path, "rb+") as file:
                size = os.fstat(file.fileno()).st_size
                os.fsync(file.fileno())
        except OSError as exc:
            raise OSError(f"could not write {display_path(self.folder / name)}: {exc.strerror or exc}") from exc
        if size == 0:
            raise OSError(f"could not write {display_path(self.folder / name)}: the file is empty (is the disk full?)")
        self._names.append(name)

    def commit(self) -> None:
        self._committed = True
        for top in dict.fromkeys(name.split("/", 1)[0] for name in self._names):
            staged, target = self._staging / top, self.folder / top
            if staged.is_dir() and os.path.lexists(target):  # os.replace cannot replace a folder that has files
                os.replace(target, self._staging / f".previous-{top}")
            os.replace(staged, target)


def write_durably(path: Path, data: bytes) -> None:
    """Write and fsync, so that a full disk fails here rather than after the rename."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())

