"""raw as an image format: the file is the disk, byte for byte."""

from __future__ import annotations

import os
from typing import Any

from blockyard.block.formats.base import CheckReport, ImageInfo, ImageLayer, Progress
from blockyard.block.layer import FileMap
from blockyard.block.raw import RawFile
from blockyard.errors import MediaError


class RawImage(RawFile, ImageLayer):
    format_name = "raw"

    def __init__(self, path: str | os.PathLike[str], **kw: Any) -> None:
        super().__init__(path, **kw)
        self.sync_map = self._map_whole

    def _map_whole(self, offset: int, length: int) -> FileMap | None:
        """``Layer.sync_map``: the file is the disk, so one run at the same offset --
        while the file offers ``sendfile_fd`` (not once closed, nor when a subclass
        reads around the page cache)."""
        fd = self.sendfile_fd
        if fd is None or offset < 0 or length <= 0 or offset + length > self.size:
            return None
        return FileMap([(fd, offset, length)])

    @staticmethod
    def probe(head: bytes, size: int) -> bool:
        return True

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> RawImage:
        return cls(path, read_only=read_only)

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> RawImage:
        if variant not in ("dynamic", "fixed"):
            raise MediaError(f"{os.fspath(path)}: raw images have no variant {variant!r}")
        img = RawFile.create_sparse(path, size)
        fd = img.fd
        if variant == "fixed":
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                os.close(fd)
                raise MediaError(f"{os.fspath(path)}: cannot preallocate: {exc.strerror}") from None
        os.close(fd)
        return cls(path)

    def info(self) -> ImageInfo:
        st = os.fstat(self.fd)
        return ImageInfo(self.path, "raw", "flat", self.size, st.st_blocks * 512)

    def check(self, repair: bool = False) -> CheckReport:
        return CheckReport(self.path)

    async def compact(self, progress: Progress | None = None) -> int:
        """Punch holes where whole 64 KiB chunks read as zeroes."""
        chunk, freed = 64 << 10, 0
        for ext_off, ext in await self._data_ranges():
            pos = ext_off
            while pos < ext_off + ext:
                n = min(chunk, ext_off + ext - pos)
                if not any(await self._pread(pos, n)):
                    await self._trim(pos, n, False)
                    freed += n
                pos += n
                if progress:
                    progress(pos, self.size)
        return freed

    async def _data_ranges(self) -> list[tuple[int, int]]:
        out, pos = [], 0
        for e in await self._extents(0, self.size) if self.size else []:
            if not e.flags:
                out.append((pos, e.length))
            pos += e.length
        return out

    async def resize(self, new_size: int, force: bool = False) -> None:
        if new_size < self.size and not force:
            raise MediaError(f"{self.path}: shrinking from {self.size} to {new_size} "
                             "loses data; pass --force")
        os.ftruncate(self.fd, new_size)
        self.size = new_size

    def describe(self) -> str:
        return f"raw:{self.path}"
