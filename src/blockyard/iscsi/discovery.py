"""SendTargets (RFC 7143 §13.3, Appendix C): which targets an initiator may see.

Only targets whose ACL admits the asking initiator are listed.  In a
Discovery session ``All`` (or an empty value) lists them all and a target
name lists that one; in a Normal session the answer never names a target
other than the session's own.
"""

from __future__ import annotations

from blockyard.iscsi.session import PortalConfig


def send_targets(value: str, portal: PortalConfig, initiator: str, session_target: str,
                 address: str) -> list[tuple[str, str]]:
    """The TargetName / TargetAddress pairs answering ``SendTargets=<value>``."""
    discovery = not session_target
    if value == "All" or (value == "" and discovery):
        names = list(portal.targets) if discovery else [session_target]
    elif value == "":
        names = [session_target]
    else:
        names = [value] if discovery or value == session_target else []
    out: list[tuple[str, str]] = []
    for name in names:
        policy = portal.targets.get(name)
        if policy is None or not policy.admits(initiator):
            continue
        out.append(("TargetName", name))
        if address:
            out.append(("TargetAddress", f"{address},{portal.tpgt}"))
    return out


def format_portal(host: str, port: int) -> str:
    """host:port with IPv6 addresses in brackets (§13.8)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
