"""What a real node needs from this machine: the checks, and the host changes undone after."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .nodeplane import NODE_ADDRESS

CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_NETWORK = "k8s-pod-net"
BRIDGE = "cni0"
# Changed by the node (kubelet: overcommit and panic; kube-proxy: route_localnet).
SYSCTLS = (
    "net/ipv4/ip_forward",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
TOOLS = (
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "podman",
    "iptables",
    "ip",
    "mount",
    "umount",
)
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
NODE_BINARIES = ("kubelet", "kube-scheduler", "kube-proxy")


def run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a host command, output captured; raise with its stderr when `check` and it fails."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def failed_check(bin_dir: Path | None) -> str | None:
    """The first prerequisite of a real node this machine lacks, as the check that failed."""
    if os.geteuid() != 0:
        return f"os.geteuid() == 0 (running as uid {os.geteuid()}; a kubelet needs root)"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return (
                f"shutil.which({tool!r}) is None (apt-get install containerd runc podman iptables)"
            )
    for plugin in CNI_PLUGINS:
        if not (CNI_BIN_DIR / plugin).is_file():
            return f"{CNI_BIN_DIR / plugin} missing (apt-get install containernetworking-plugins)"
    if not (
        Path("/sys/fs/cgroup/memory").is_dir()
        or Path("/sys/fs/cgroup/cgroup.controllers").is_file()
    ):
        return (
            "no memory cgroup: /sys/fs/cgroup/memory and /sys/fs/cgroup/cgroup.controllers absent"
        )
    if bin_dir is not None:
        for name in NODE_BINARIES:
            if not os.access(bin_dir / name, os.X_OK):
                return f"{bin_dir / name} is not executable (scripts/kube-binaries.sh builds it)"
    if CONTAINERD_SOCKET.exists():
        probe = run("ctr", "--timeout", "2s", "version", check=False, timeout=10)
        if probe.returncode == 0:
            return f"{CONTAINERD_SOCKET} is served by a containerd this test did not start"
    probe = run("iptables", "-t", "nat", "-S", "POSTROUTING", check=False)
    if probe.returncode != 0:
        return f"iptables -t nat -S POSTROUTING failed: {probe.stderr.strip()}"
    if run("ip", "-4", "addr", "show", "dev", "lo", check=False).stdout.count(f"{NODE_ADDRESS}/32"):
        return f"{NODE_ADDRESS}/32 is already on lo (another node running? see NODE-stop)"
    return None


@dataclass
class HostChanges:
    """The node's changes to this machine, recorded as made and undone in reverse."""

    sysctls: dict[str, str] = field(default_factory=dict)
    address_added: bool = False
    hugetlb_mounted: bool = False

    def prepare(self) -> None:
        for key in SYSCTLS:
            path = Path("/proc/sys") / key
            with contextlib.suppress(OSError):
                self.sysctls[key] = path.read_text().strip()
        run("ip", "addr", "add", f"{NODE_ADDRESS}/32", "dev", "lo")
        self.address_added = True
        # The kubelet's cgroup manager wants every v1 controller it knows; this one is not
        # mounted by default here.
        hugetlb = Path("/sys/fs/cgroup/hugetlb")
        if Path("/sys/fs/cgroup/memory").is_dir() and not os.path.ismount(hugetlb):
            hugetlb.mkdir(exist_ok=True)
            run("mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", str(hugetlb))
            self.hugetlb_mounted = True
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")

    def undo(self, kubelet_root: Path) -> list[str]:
        """Undo everything (best effort, every step tried); return what could not be undone."""
        problems: list[str] = []

        def attempt(what: str, *argv: str) -> None:
            proc = run(*argv, check=False)
            if proc.returncode != 0:
                problems.append(f"{what}: {proc.stderr.strip()}")

        _unmount_below(kubelet_root, problems)
        _unmount_below(Path("/run/containerd/io.containerd.grpc.v1.cri"), problems)
        clean_iptables(problems)
        netns = Path("/run/netns")
        for ns in sorted(netns.glob("cni-*")) if netns.is_dir() else []:
            attempt(f"ip netns delete {ns.name}", "ip", "netns", "delete", ns.name)
        shutil.rmtree(f"/var/lib/cni/networks/{CNI_NETWORK}", ignore_errors=True)
        for result in Path("/var/lib/cni/results").glob(f"{CNI_NETWORK}-*"):
            result.unlink(missing_ok=True)
        if run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            attempt(f"ip link del {BRIDGE}", "ip", "link", "del", BRIDGE)
        if self.address_added:
            attempt("remove the lo alias", "ip", "addr", "del", f"{NODE_ADDRESS}/32", "dev", "lo")
        for cgroup in Path("/sys/fs/cgroup").glob("*/kubepods"):
            for sub in sorted(cgroup.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        if netns.is_dir() and not any(netns.iterdir()) and os.path.ismount(netns):
            attempt("umount /run/netns", "umount", str(netns))
        if self.hugetlb_mounted:
            attempt("umount hugetlb", "umount", "/sys/fs/cgroup/hugetlb")
            with contextlib.suppress(OSError):
                Path("/sys/fs/cgroup/hugetlb").rmdir()
        for key, value in self.sysctls.items():
            try:
                (Path("/proc/sys") / key).write_text(value)
            except OSError as exc:
                problems.append(f"restore {key}={value}: {exc}")
        return problems


def _unmount_below(root: Path, problems: list[str]) -> None:
    """Unmount every mount at or below `root`, deepest first."""
    prefix = str(root)
    mounts = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[1] == prefix or line.split()[1].startswith(prefix + "/")
    ]
    for mount in sorted(mounts, key=len, reverse=True):
        proc = run("umount", mount, check=False)
        if proc.returncode != 0:
            problems.append(f"umount {mount}: {proc.stderr.strip()}")


def clean_iptables(problems: list[str]) -> None:
    """Remove the KUBE-* chains (kubelet, kube-proxy) and the bridge plugin's masquerading.

    Only what the node made: other CNI users (podman's CNI-FORWARD, say) are left alone.
    """
    for table in ("nat", "filter", "mangle"):
        rules = [shlex.split(r) for r in run("iptables", "-t", table, "-S").stdout.splitlines()]
        ours = {r[1] for r in rules if r[:1] == ["-N"] and r[1].startswith("KUBE-")}
        for rule in rules:
            if rule[:1] != ["-A"] or rule[1] in ours:
                continue
            target = rule[rule.index("-j") + 1] if "-j" in rule else ""
            comment = rule[rule.index("--comment") + 1] if "--comment" in rule else ""
            if target.startswith("KUBE-") or f'name: "{CNI_NETWORK}"' in comment:
                if target.startswith("CNI-"):
                    ours.add(target)
                run("iptables", "-t", table, "-D", *rule[1:], check=False)
        for chain in ours:
            run("iptables", "-t", table, "-F", chain, check=False)
        for chain in ours:
            proc = run("iptables", "-t", table, "-X", chain, check=False)
            if proc.returncode != 0:
                problems.append(f"iptables -t {table} -X {chain}: {proc.stderr.strip()}")
