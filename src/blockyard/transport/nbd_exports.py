"""NBD exports: a named block layer, how it is presented, and the table of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from blockyard.block.layer import Layer
from blockyard.block.writemode import MediumHub
from blockyard.nbd import constants as c
from blockyard.nbd.events import ExportSpec
from blockyard.transport.nbd_ops import export_flags

TF = c.TransmissionFlag


@dataclass
class Export:
    """One named export: a block layer and how to present it."""

    name: str
    layer: Layer
    description: str = ""
    read_only: bool = False
    hub: MediumHub | None = None  # write-mode policy shared with other protocols
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "bytes": 0})

    def spec(self, layer: Layer | None = None) -> ExportSpec:
        layer = layer or self.layer
        lim = layer.limits
        read_only = self.read_only or (self.hub is not None and self.hub.mode == "readonly")
        flags = export_flags(layer, read_only)
        if self.hub is not None and not self.hub.multi_conn:
            flags &= ~int(TF.CAN_MULTI_CONN)
        return ExportSpec(self.name, layer.size, flags, self.description,
                          lim.minimum, lim.preferred, lim.maximum)


class ExportTable:
    """Exports by name; the empty name selects the default (first) export."""

    def __init__(self, exports: list[Export] | None = None) -> None:
        self._by_name: dict[str, Export] = {}
        for e in exports or []:
            self.add(e)

    def add(self, export: Export) -> None:
        self._by_name[export.name] = export

    def remove(self, name: str) -> Export | None:
        return self._by_name.pop(name, None)

    def lookup(self, name: str) -> Export | None:
        if name == "" and self._by_name:
            return next(iter(self._by_name.values()))
        return self._by_name.get(name)

    def listing(self) -> list[tuple[str, str]]:
        return [(e.name, e.description) for e in self._by_name.values()]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._by_name.values()))
