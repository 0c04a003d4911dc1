"""iSCSI URLs: ``iscsi://[user[%secret]@]host[:port]/TARGET-IQN/LUN[?key=value&...]``.

The form QEMU and libiscsi users know.  As in libiscsi the secret follows
the first ``%`` of the user part literally (no percent-decoding), so a
secret may hold any character but ``@``.  Query keys:

* ``header_digest=crc32c|none|crc32c-none|none-crc32c`` (libiscsi / QEMU
  spelling; the first named is preferred) and ``data_digest=`` likewise;
* ``target_user=`` / ``target_password=`` for mutual CHAP (libiscsi);
* secrets kept out of the URL (and so out of ``ps`` and the registry):
  ``secret_file=PATH`` / ``secret_env=NAME`` for the initiator's secret,
  ``target_secret_file=`` / ``target_secret_env=`` for the target's; with a
  user but no secret anywhere, ``BLOCKYARD_ISCSI_SECRET`` (and
  ``BLOCKYARD_ISCSI_TARGET_SECRET`` for a ``target_user``) is used;
* ``initiator_name=IQN``, ``timeout=SECONDS`` (per command, 0 = none),
  ``reconnect=SECONDS`` (how long a dropped session is retried).

``IscsiUrl.display`` is the URL with every secret replaced by ``***``: the
only form that appears in messages and logs.  Errors are ``ConfigError``
naming that form and the problem.  A portal alone (``host[:port]`` or
``iscsi://host[:port]``) is what discovery takes (``parse_portal``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from blockyard.errors import ConfigError

DEFAULT_PORT = 3260
SECRET_ENV = "BLOCKYARD_ISCSI_SECRET"
TARGET_SECRET_ENV = "BLOCKYARD_ISCSI_TARGET_SECRET"
DIGESTS = {"none": ("None",), "crc32c": ("CRC32C",), "crc32c-none": ("CRC32C", "None"),
           "none-crc32c": ("None", "CRC32C")}
_KEYS = frozenset({"header_digest", "data_digest", "target_user", "target_password",
                   "secret_file", "secret_env", "target_secret_file", "target_secret_env",
                   "initiator_name", "timeout", "reconnect"})


@dataclass(frozen=True)
class IscsiUrl:
    host: str
    port: int = DEFAULT_PORT
    target: str = ""
    lun: int = 0
    user: str = ""
    secret: str = field(default="", repr=False)
    target_user: str = ""
    target_secret: str = field(default="", repr=False)
    header_digest: tuple[str, ...] = ("None", "CRC32C")
    data_digest: tuple[str, ...] = ("None",)
    initiator_name: str = ""
    timeout: float | None = None
    reconnect: float | None = None
    display: str = ""

    @property
    def portal(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _fail(display: str, why: str) -> ConfigError:
    return ConfigError(f"{display}: {why}")


def parse_portal(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or ``iscsi://host[:port][/]`` -> (host, port)."""
    rest = text[len("iscsi://"):] if text.startswith("iscsi://") else text
    rest = rest.rstrip("/")
    if not rest or "/" in rest or "@" in rest:
        raise ConfigError(f"{text}: expected a portal HOST[:PORT]")
    return _host_port(rest, text)


def _host_port(hostport: str, display: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, sep, tail = hostport[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise _fail(display, f"bad IPv6 portal {hostport!r}")
        port_text = tail[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise _fail(display, "no host")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _fail(display, f"bad port {port_text!r}")
    return host, int(port_text)


def _redact(url: str) -> str:
    """The URL with the userinfo secret and secret-bearing query values hidden."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    auth, at, tail = rest.partition("@")
    if at and "/" not in auth:
        user, pct, _secret = auth.partition("%")
        head = f"{scheme}://{user}{'%***' if pct else ''}@{tail}"
    if sep:
        parts = []
        for item in query.split("&"):
            key, eq, _value = item.partition("=")
            parts.append(f"{key}=***" if key == "target_password" and eq else item)
        head += "?" + "&".join(parts)
    return head


def parse_url(url: str, environ: dict[str, str] | None = None) -> IscsiUrl:
    """Parse an iSCSI URL (see the module docstring); secrets are resolved here."""
    env = os.environ if environ is None else environ
    display = _redact(url)
    if not url.startswith("iscsi://"):
        raise ConfigError(f"{display}: not an iscsi:// URL")
    head, _, query = url[len("iscsi://"):].partition("?")
    auth, at, location = head.rpartition("@")
    if not at:
        auth, location = "", head
    parts = location.split("/")
    if len(parts) != 3 or not parts[1]:
        raise _fail(display, "expected iscsi://[user[%secret]@]host[:port]/TARGET-IQN/LUN")
    host, port = _host_port(parts[0], display)
    target = unquote(parts[1])
    if not parts[2].isdigit() or int(parts[2]) >= 16384:
        raise _fail(display, f"bad LUN {parts[2]!r} (0..16383)")
    opts = _query(query, display)
    user, _, secret = auth.partition("%")
    user = unquote(user)
    secret = (secret or _secret(opts, "", env, display)) if user else ""
    target_user = opts.get("target_user", "")
    target_secret = opts.get("target_password", "")
    if target_user and not target_secret:
        target_secret = _secret(opts, "target_", env, display)
    if target_user and not user:
        raise _fail(display, "mutual CHAP (target_user) needs an initiator user too")
    return IscsiUrl(host, port, target, int(parts[2]), user, secret, target_user, target_secret,
                    _digest(opts, "header_digest", ("None", "CRC32C"), display),
                    _digest(opts, "data_digest", ("None",), display),
                    opts.get("initiator_name", ""), _seconds(opts, "timeout", display),
                    _seconds(opts, "reconnect", display), display)


def _query(query: str, display: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in _KEYS:
            raise _fail(display, f"unknown query key {key!r} (known: {', '.join(sorted(_KEYS))})")
        opts[key] = value
    return opts


def _digest(opts: dict[str, str], key: str, default: tuple[str, ...],
            display: str) -> tuple[str, ...]:
    value = opts.get(key)
    if value is None:
        return default
    try:
        return DIGESTS[value.lower()]
    except KeyError:
        raise _fail(display, f"{key} must be one of {', '.join(DIGESTS)}") from None


def _seconds(opts: dict[str, str], key: str, display: str) -> float | None:
    value = opts.get(key)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e6:
        raise _fail(display, f"{key} must be a number of seconds")
    return seconds


def _secret(opts: dict[str, str], prefix: str, env: dict[str, str] | os._Environ[str],
            display: str) -> str:
    """A secret from ``<prefix>secret_file``, ``<prefix>secret_env`` or the default variable."""
    path = opts.get(prefix + "secret_file")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip("\r\n")
        except OSError as exc:
            raise _fail(display, f"cannot read {prefix}secret_file {path}: "
                                 f"{exc.strerror}") from None
        if not secret:
            raise _fail(display, f"{prefix}secret_file {path} is empty")
        return secret
    name = opts.get(prefix + "secret_env") or (TARGET_SECRET_ENV if prefix else SECRET_ENV)
    secret = env.get(name, "")
    if not secret:
        who = "target " if prefix else ""
        raise _fail(display, f"no {who}CHAP secret: give it in the URL, "
                             f"{prefix}secret_file=, {prefix}secret_env= or ${name}")
    return secret
