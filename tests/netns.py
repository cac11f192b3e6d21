"""Two "hosts" on one Linux machine: two network namespaces joined by a veth pair.

Each namespace has its own interfaces (loopback, one end of the veth), routing table and ports, so a
Ray head started in namespace A with ``--node-ip-address`` on the veth and a Ray worker started in
namespace B reach each other only over that link, as two machines on a private network would. They
still share the file system (like nodes with a shared filesystem, which asr-kd assumes), the process
table and the CPUs.

Processes are started in a namespace with ``ip netns exec``; ``ip netns pids`` lists exactly the
processes whose network namespace is that one (whatever their name or parent), which is how
``kill_all`` finds a "host's" processes without touching anyone else's. ``ray stop`` must not be used
here: it kills Ray processes *by name, machine-wide* (Ray 2.60 ``scripts.py``), so it would also stop
Ray clusters of other users of this machine.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for ``ip netns add``); ``unavailable()`` says why not.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time


# the start of every skip reason that is about this machine's privileges, not about a missing install:
# tests/conftest.py lists it among the skips that stay skips under CI=true
NO_PRIVILEGE = "needs root on Linux with network namespaces"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def unavailable() -> str | None:
    """Why two network namespaces cannot be made here (None: they can). Tries a real one."""
    if not hasattr(os, "geteuid") or not os.path.isdir("/proc"):
        return f"{NO_PRIVILEGE}: not Linux"
    if os.geteuid() != 0:
        return f"{NO_PRIVILEGE}: not root"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command (Debian package iproute2)"
    probe = f"akdprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"{NO_PRIVILEGE}: ip netns add failed ({made.stderr.strip()}; a container without CAP_SYS_ADMIN/CAP_NET_ADMIN?)"
    try:
        veth = _ip("-n", probe, "link", "add", f"{probe[:9]}x", "type", "veth", "peer", "name", f"{probe[:9]}y", check=False)
        if veth.returncode != 0:
            return f"{NO_PRIVILEGE}: ip link add type veth failed ({veth.stderr.strip()})"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


class NetnsPair:
    """Namespaces ``a`` and ``b``, veth ``a_if`` (``ip_a``/24) <-> ``b_if`` (``ip_b``/24), loopback up in both.

    Names and the subnet are random per instance (``akd<hex>a``, ``10.213.<n>.0/24``): the pair lives
    entirely inside its two namespaces, nothing is added to the host's own namespace. Use as a context
    manager; ``close()`` kills every process left in either namespace and deletes both (which deletes
    the veth pair).
    """

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.a, self.b = f"akd{tag}a", f"akd{tag}b"
        self.a_if, self.b_if = f"akd{tag}va", f"akd{tag}vb"  # <= 15 characters (IFNAMSIZ)
        subnet = 1 + secrets.randbelow(254)
        self.ip_a, self.ip_b = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        self.created: list[str] = []

    def __enter__(self) -> "NetnsPair":
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns)
                self.created.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.a, "link", "add", self.a_if, "type", "veth", "peer", "name", self.b_if, "netns", self.b)
            for ns, dev, ip in ((self.a, self.a_if, self.ip_a), (self.b, self.b_if, self.ip_b)):
                _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cmd(self, ns: str, argv: list[str]) -> list[str]:
        """``argv`` run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def pids(self, ns: str) -> list[int]:
        """Every process whose network namespace is ``ns``."""
        out = _ip("netns", "pids", ns, check=False)
        return sorted(int(p) for p in out.stdout.split() if p.strip().isdigit())

    def kill_all(self, ns: str, timeout: float = 15.0) -> int:
        """SIGKILL every process in namespace ``ns`` until none is left; returns how many were killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.pids(ns) if p != os.getpid()]
            if not pids:
                return len(killed)
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes in network namespace {ns} survive SIGKILL: {pids}")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def close(self) -> None:
        errors = []
        for ns in reversed(self.created):
            try:
                self.kill_all(ns)
            except RuntimeError as exc:
                errors.append(str(exc))
            gone = _ip("netns", "del", ns, check=False)
            if gone.returncode != 0 and ns in namespaces():
                errors.append(f"ip netns del {ns}: {gone.stderr.strip()}")
        self.created = []
        if errors:
            raise RuntimeError("; ".join(errors))


def namespaces() -> list[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    out = _ip("netns", "list", check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
