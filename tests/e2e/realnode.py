"""A real node on this machine: containerd + CNI bridge, kubelet, scheduler, kube-proxy."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import kubernetes
import yaml

from tests.cluster.controlplane import wait_until
from tests.cluster.processes import ManagedProcess, free_port, start_process

from .host import BRIDGE, CNI_BIN_DIR, CNI_NETWORK, CONTAINERD_SOCKET, HostChanges, run
from .nodeplane import NODE_ADDRESS, NODE_NAME, POD_CIDR, NodeControlPlane

PAUSE_IMAGE = "localhost/pause:3.4.1"
POD_SUBNET = "10.244.0.0/24"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class RealNode:
    """One node registered with `plane`; start() brings it to Ready, stop() leaves no trace."""

    def __init__(self, plane: NodeControlPlane, bin_dir: Path, workdir: Path) -> None:
        self.plane = plane
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.log_dir = workdir / "logs"
        self.kubelet_root = workdir / "kubelet"
        self.host = HostChanges()
        self.processes: dict[str, ManagedProcess] = {}
        self.timings: dict[str, float] = {}

    # -- start -----------------------------------------------------------------------

    def prepare_host(self) -> None:
        """The node address, cgroups and sysctls; before the control plane (it listens there)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host.prepare()

    def start(self, images: list[str]) -> None:
        """containerd with `images` imported, then scheduler, kubelet, kube-proxy; until Ready."""
        t0 = time.monotonic()
        self._start_containerd()
        self.timings["containerd"] = time.monotonic() - t0
        for image in [PAUSE_IMAGE, *images]:
            import_image(image)
        # Earlier builds (other content hashes) would pile up gigabytes in containerd.
        for stale in set(_ctr("images", "ls", "-q").split()) - {PAUSE_IMAGE, *images}:
            if stale.startswith("localhost/lorafuse/"):
                run("ctr", "-n", "k8s.io", "images", "rm", stale, check=False)
        self.timings["images imported"] = time.monotonic() - t0
        t1 = time.monotonic()
        self._start_scheduler()
        self._start_kubelet()
        self._start_kube_proxy()
        core = kubernetes.client.CoreV1Api(self.plane.client)
        wait_until(
            lambda: _node_ready(core), timeout=120, what=f"node {NODE_NAME} Ready", interval=0.5
        )
        self.timings["node Ready after the images"] = time.monotonic() - t1

    def _launch(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = start_process(name, argv, self.log_dir / f"{name}.log")
        self.processes[name] = proc
        return proc

    def _start_containerd(self) -> None:
        conf_dir = self.workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "10-k8s.conflist").write_text(json.dumps(cni_config(), indent=2))
        config = self.workdir / "containerd.toml"
        config.write_text(containerd_config(conf_dir))
        proc = self._launch("containerd", ["containerd", "--config", str(config)])

        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"containerd exited:\n{proc.log_tail()}")
            return run("ctr", "--timeout", "2s", "version", check=False, timeout=10).returncode == 0

        wait_until(up, timeout=30, what="containerd", interval=0.25)

    def _start_scheduler(self) -> None:
        config = self.workdir / "kube-scheduler.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1beta1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {
                        "kubeconfig": str(self.plane.component_kubeconfig("kube-scheduler"))
                    },
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self._launch(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--config={config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--port=0",
                "--v=1",
            ],
        )

    def _start_kubelet(self) -> None:
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(self.plane.ca_file, self.workdir)))
        self._launch(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={self.plane.component_kubeconfig('kubelet')}",
                f"--root-dir={self.kubelet_root}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_ADDRESS}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{CONTAINERD_SOCKET}",
                f"--pod-infra-container-image={PAUSE_IMAGE}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "bindAddress": NODE_ADDRESS,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    "clusterCIDR": POD_CIDR,
                    "hostnameOverride": NODE_NAME,
                    "clientConnection": {
                        "kubeconfig": str(self.plane.component_kubeconfig("kube-proxy"))
                    },
                    # 0: leave the host's conntrack sysctls alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "nodePortAddresses": [f"{NODE_ADDRESS}/32"],
                }
            )
        )
        self._launch("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={config}"])

    # -- stop ------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Tear pods down through the kubelet, stop everything, undo the host changes.

        Returns what could not be cleaned up (empty when the machine is as before).
        """
        problems: list[str] = []
        kubelet = self.processes.get("kubelet")
        if kubelet is not None and kubelet.alive():
            try:
                self.drain()
            except Exception as exc:  # keep cleaning up
                problems.append(f"drain: {exc}")
        for name in ("kube-proxy", "kubelet", "kube-scheduler"):
            if name in self.processes:
                self.processes.pop(name).stop(grace=15)
        self.plane.stop()
        if "containerd" in self.processes:
            remove_sandboxes(problems)
            self.processes.pop("containerd").stop(grace=15)
        run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
        problems += self.host.undo(self.kubelet_root)
        return problems

    def drain(self) -> None:
        """Delete every controller and pod, and wait until the kubelet has stopped them all.

        Test namespaces go as a whole: an operator left running would recreate its children.
        """
        core = kubernetes.client.CoreV1Api(self.plane.client)
        for namespace in core.list_namespace().items:
            if namespace.metadata.name not in SYSTEM_NAMESPACES:
                core.delete_namespace(namespace.metadata.name, grace_period_seconds=1)
        for kinds in ("deploy,rs,sts,ds,job,cronjob", "pods"):
            self.plane.kubectl(
                "delete", kinds, "--all", "-A", "--wait=false", "--grace-period=1", check=False
            )
        wait_until(
            lambda: not core.list_pod_for_all_namespaces().items,
            timeout=180,
            what="all pods deleted",
            interval=1,
        )
        wait_until(
            lambda: not _ctr("tasks", "ls", "-q").strip(),
            timeout=60,
            what="containerd tasks stopped",
            interval=1,
        )


def _ctr(*args: str) -> str:
    return run("ctr", "-n", "k8s.io", *args, check=False).stdout


def import_image(image: str) -> None:
    """Copy `image` from podman's storage into containerd's k8s.io namespace (once)."""
    if image in _ctr("images", "ls", "-q").split():
        return
    save = subprocess.Popen(
        ["podman", "save", "--format", "docker-archive", image], stdout=subprocess.PIPE
    )
    load = subprocess.run(
        ["ctr", "-n", "k8s.io", "images", "import", "-"],
        stdin=save.stdout,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert save.stdout is not None
    save.stdout.close()
    if save.wait() != 0 or load.returncode != 0:
        raise RuntimeError(f"importing {image} into containerd failed: {load.stderr.strip()}")


def remove_sandboxes(problems: list[str]) -> None:
    """Stop and remove what the kubelet left in containerd (tasks, containers)."""
    for task in _ctr("tasks", "ls", "-q").split():
        run("ctr", "-n", "k8s.io", "tasks", "kill", "-s", "KILL", task, check=False)
    time.sleep(1)
    for task in _ctr("tasks", "ls", "-q").split():
        run("ctr", "-n", "k8s.io", "tasks", "delete", "-f", task, check=False)
    for container in _ctr("containers", "ls", "-q").split():
        proc = run("ctr", "-n", "k8s.io", "containers", "rm", container, check=False)
        if proc.returncode != 0:
            problems.append(f"ctr containers rm {container}: {proc.stderr.strip()}")


def _node_ready(core: kubernetes.client.CoreV1Api) -> bool:
    node = core.read_node(NODE_NAME)
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def cni_config() -> dict:
    """Bridge + host-local + portmap + loopback; pods on POD_SUBNET behind BRIDGE."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def containerd_config(cni_conf_dir: Path) -> str:
    """CRI with runc v2 and cgroupfs; restrict_oom_score_adj: root lacks CAP_SYS_RESOURCE here."""
    return f"""version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{cni_conf_dir}"
"""


def kubelet_config(ca_file: Path, workdir: Path) -> dict:
    """cgroupfs, no node-allocatable enforcement, low eviction thresholds, webhook auth."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_ADDRESS,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port(),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "clusterDomain": "cluster.local",
        "clusterDNS": [],
        "resolvConf": "/etc/resolv.conf",
        "staticPodPath": str(workdir / "static-pods"),
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "runtimeRequestTimeout": "10m",
        "makeIPTablesUtilChains": True,
        "containerLogMaxSize": "10Mi",
    }
