"""The TOML configuration: loaded into dataclasses, every error reported at once.

A configuration declares up front what the daemon serves (see
``configs/blockyard.toml``, the embedded default, and ``configs/examples/``)::

    [server]       state_dir, log_level, log_file
    [nbd]          listen = ["HOST:PORT", ...]
    [control]      socket (in the state directory), listen (optional TCP), token_file
    [iscsi]        listen = ["HOST:PORT", ...] (empty: no iSCSI target service)
    [[target]]     controller, iqn, alias, acl, chap_user, chap_secret(_file),
                   mutual_user, mutual_secret(_file) -- a controller's iSCSI target
    [[bandwidth_group]] name, limit (VBoxManage units: "20M", "100m", 0 = unlimited)
    [[controller]] name, type, host_cache
    [[attachment]] controller, port, medium (path), name (export), format,
                   create_size, description, kind, write_mode, variant,
                   bandwidth_group
    [[export]]     name, path, format, create_size, description, read_only
                   (the first embedded default's shape: still accepted, served
                   as attachments of an implicit controller "exports")

How it is checked.  ``tomllib`` parses (a syntax error carries its line);
then every table is walked against ``SCHEMA`` (in ``config_schema.py``) -- for
each key a converter that raises ``ValueError`` with the complaint, whether it
is required, and its default.  Unknown keys are errors (with a "did you mean" when a known
key is close), and so are cross-references: an attachment to an undeclared
controller, a port the controller type does not have, two attachments in
one port, two exports with one name.  Problems are collected, not raised one
by one, and each is reported as ``FILE:LINE: KEY: message``.  tomllib gives
no line numbers after parsing, so ``locate`` finds a key's line by scanning
the text for its table header and then the key.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from blockyard.config_schema import (
    FORMATS,
    LOG_LEVELS,
    REQ,
    SCHEMA,
    SECTION_FIELD,
    AttachmentDecl,
    BandwidthGroupDecl,
    Config,
    ControllerDecl,
    ControlSection,
    ExportDecl,
    IscsiSection,
    NbdSection,
    ServerSection,
    Spec,
    TargetDecl,
)
from blockyard.errors import ConfigError
from blockyard.media.model import CONTROLLER_SLOTS

__all__ = [  # the typed result and schema are re-exported: importers use blockyard.config
    "FORMATS", "LOG_LEVELS", "REQ", "SCHEMA", "SECTION_FIELD", "AttachmentDecl",
    "BandwidthGroupDecl", "Config", "ControlSection", "ControllerDecl", "ExportDecl",
    "IscsiSection", "NbdSection", "ServerSection", "Spec", "TargetDecl", "check_file",
    "load_default", "load_file", "load_text", "locate", "parse",
]

Path_ = tuple[Any, ...]


# ---- loading ---------------------------------------------------------------------------------
class _Problems:
    """Collects (key path, message) pairs and renders them with file and line."""

    def __init__(self, source: str, text: str) -> None:
        self.source, self.text, self.items = source, text, []  # type: ignore[var-annotated]

    def add(self, path: Path_, message: str) -> None:
        self.items.append((path, message))

    def render(self) -> list[str]:
        located = [(locate(self.text, path), path, msg) for path, msg in self.items]
        located.sort(key=lambda x: x[0])
        return [f"{self.source}:{line}: {_key_name(path)}: {msg}" for line, path, msg in located]


def _key_name(path: Path_) -> str:
    parts: list[str] = []
    for p in path:
        if isinstance(p, int):
            parts[-1] += f"[{p}]"
        else:
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def parse(text: str, source: str = "<text>") -> tuple[Config, list[str]]:
    """Parse and check ``text``; returns the config and every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{source}:{m.group(1)}" if m else source
        return Config(source), [f"{where}: TOML syntax: {str(exc).split(' (at line')[0]}"]
    problems = _Problems(source, text)
    cfg = Config(source)
    for key, value in data.items():
        if key not in SCHEMA:
            problems.add((key,), "unknown section" + _did_you_mean(key, SCHEMA))
            continue
        _load_section(cfg, key, value, problems)
    _cross_check(cfg, problems)
    return cfg, problems.render()


def _load_section(cfg: Config, key: str, value: Any, problems: _Problems) -> None:
    array, spec, cls = SCHEMA[key]
    if array:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            problems.add((key,), f"must be written [[{key}]] (an array of tables)")
            return
        items = [_load_table(spec, cls, v, (key, i), problems) for i, v in enumerate(value)]
        getattr(cfg, SECTION_FIELD[key]).extend(x for x in items if x is not None)
        return
    if not isinstance(value, dict):
        problems.add((key,), f"must be a table [{key}]")
        return
    loaded = _load_table(spec, cls, value, (key,), problems)
    if loaded is not None:
        setattr(cfg, key, loaded)


def _load_table(spec: Spec, cls: type, table: dict[str, Any], path: Path_,
                problems: _Problems) -> Any:
    values, ok = {}, True
    for k, v in table.items():
        if k not in spec:
            problems.add((*path, k), "unknown key" + _did_you_mean(k, spec))
            ok = False
            continue
        try:
            values[k] = spec[k][0](v)
        except ValueError as exc:
            problems.add((*path, k), str(exc))
            ok = False
    for k, (_conv, default) in spec.items():
        if k not in table:
            if default is REQ:
                problems.add(path, f"missing required key {k!r}")
                ok = False
            else:
                values[k] = default
    return cls(**values) if ok else None


def _did_you_mean(key: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def _cross_check(cfg: Config, problems: _Problems) -> None:
    names: dict[str, int] = {}
    for i, c in enumerate(cfg.controllers):
        if c.name in names:
            problems.add(("controller", i, "name"), f"controller {c.name!r} declared twice")
        names[c.name] = CONTROLLER_SLOTS[c.type]
    exports: set[str] = set()
    slots: set[tuple[str, int]] = set()
    for i, a in enumerate(cfg.attachments):
        if a.controller not in names:
            problems.add(("attachment", i, "controller"),
                         f"no [[controller]] named {a.controller!r} in this file")
        elif a.port >= names[a.controller]:
            problems.add(("attachment", i, "port"), f"controller {a.controller!r} has ports "
                         f"0-{names[a.controller] - 1}")
        if (a.controller, a.port) in slots:
            problems.add(("attachment", i, "port"), f"{a.controller}:{a.port} is used twice")
        slots.add((a.controller, a.port))
        name = a.name or f"{a.controller}-{a.port}"
        if name in exports:
            problems.add(("attachment", i, "name"), f"export name {name!r} is used twice")
        exports.add(name)
    for i, e in enumerate(cfg.exports):
        if e.name in exports:
            problems.add(("export", i, "name"), f"export name {e.name!r} is used twice")
        exports.add(e.name)
    if cfg.control.listen and not cfg.control.token_file:
        problems.add(("control", "listen"), "a TCP control listener needs token_file")
    _check_targets(cfg, set(names), problems)
    _check_groups(cfg, problems)


def _check_targets(cfg: Config, controllers: set[str], problems: _Problems) -> None:
    seen: dict[str, str] = {}
    for i, t in enumerate(cfg.targets):
        if t.controller not in controllers:
            problems.add(("target", i, "controller"),
                         f"no [[controller]] named {t.controller!r} in this file")
        elif t.controller in seen.values():
            problems.add(("target", i, "controller"), f"controller {t.controller!r} has two "
                         "[[target]] tables")
        if t.iqn and t.iqn in seen:
            problems.add(("target", i, "iqn"), f"target name {t.iqn!r} is used twice")
        seen[t.iqn or f"#{i}"] = t.controller
        for who in ("chap", "mutual"):
            user, secret = getattr(t, f"{who}_user"), getattr(t, f"{who}_secret")
            secret_file = getattr(t, f"{who}_secret_file")
            if secret and secret_file:
                problems.add(("target", i, f"{who}_secret_file"),
                             f"give {who}_secret or {who}_secret_file, not both")
            elif bool(user) != bool(secret or secret_file):
                problems.add(("target", i, f"{who}_user"), f"{who}_user needs {who}_secret or "
                             f"{who}_secret_file, and they need {who}_user")
        if t.mutual_user and not t.chap_user:
            problems.add(("target", i, "mutual_user"), "mutual CHAP needs chap_user too")


def _check_groups(cfg: Config, problems: _Problems) -> None:
    from blockyard.block.bandwidth import check_group_name

    seen: set[str] = set()
    for i, g in enumerate(cfg.bandwidth_groups):
        try:
            check_group_name(g.name)
        except ConfigError as exc:
            problems.add(("bandwidth_group", i, "name"), str(exc))
        if g.name.lower() == "none":
            problems.add(("bandwidth_group", i, "name"), "'none' means no group; pick another")
        if g.name in seen:
            problems.add(("bandwidth_group", i, "name"), f"bandwidth group {g.name!r} is "
                         "declared twice")
        seen.add(g.name)


# ---- finding a key's line --------------------------------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def locate(text: str, path: Path_) -> int:
    """The line (1-based) where ``path`` -- (table, [index,] [key]) -- is written."""
    table, rest = path[0], list(path[1:])
    index = rest.pop(0) if rest and isinstance(rest[0], int) else None
    key = rest[0] if rest else None
    counts: dict[str, int] = {}
    current: tuple[str | None, int | None] = (None, None)
    header_line = 1
    for n, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            name = m.group(2).strip('"')
            counts[name] = counts.get(name, -1) + 1
            current = (name, counts[name] if m.group(1) == "[[" else None)
            if current == (table, index):
                header_line = n
                if key is None:
                    return n
            continue
        want = (table, index) if key else (None, None)
        if current == want and _assigns(line, key or table):
            return n
    return header_line


def _assigns(line: str, key: str) -> bool:
    return re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", line) is not None


# ---- entry points ----------------------------------------------------------------------------
def check_file(path: str | Path) -> list[str]:
    """Every problem in the file at ``path`` (empty when it is sound)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        return [f"{p}: cannot read: {exc.strerror}"]
    except UnicodeDecodeError:
        return [f"{p}: not UTF-8 text"]
    return parse(text, str(p))[1]


def load_text(text: str, source: str) -> Config:
    cfg, errors = parse(text, source)
    if errors:
        more = f" (and {len(errors) - 1} more; run 'blockyard config check')" \
            if len(errors) > 1 else ""
        raise ConfigError(errors[0] + more)
    return cfg


def load_file(path: str | Path) -> Config:
    errors = check_file(path)
    if errors:
        more = f" (and {len(errors) - 1} more; run 'blockyard config check {path}')" \
            if len(errors) > 1 else ""
        raise ConfigError(errors[0] + more)
    return load_text(Path(path).read_text(), str(path))


def load_default() -> Config:
    from importlib import resources

    text = resources.files("blockyard.defaults").joinpath("blockyard.toml").read_text()
    return load_text(text, "<embedded default>")

