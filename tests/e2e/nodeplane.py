"""The tests' control plane, reachable from pods: apiserver on the node address, node auth."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.controlplane import SERVICE_ACCOUNT_ISSUER, ControlPlane
from tests.cluster.pki import Pki, create_client_cert, create_pki
from tests.cluster.processes import free_port

# A /32 alias on `lo` (the kernel has no dummy netdev): the apiserver and the kubelet listen
# here. An apiserver cannot advertise a loopback address, and pods reach it through the
# `kubernetes` Service, which kube-proxy points at this address.
NODE_ADDRESS = "10.200.0.1"
NODE_NAME = "realnode"
SERVICE_CIDR = "10.0.0.0/24"  # the `kubernetes` Service is 10.0.0.1, in the serving cert
POD_CIDR = "10.244.0.0/16"


@dataclass(frozen=True)
class NodeUser:
    """A token-authenticated component: user name, groups, bearer token."""

    name: str
    groups: tuple[str, ...]
    token: str


def _node_users() -> dict[str, NodeUser]:
    users = {
        "kubelet": (f"system:node:{NODE_NAME}", ("system:nodes",)),
        "kube-scheduler": ("system:kube-scheduler", ()),
        "kube-proxy": ("system:kube-proxy", ()),
    }
    return {
        key: NodeUser(name, groups, secrets.token_hex(24)) for key, (name, groups) in users.items()
    }


def create_node_pki(directory: Path) -> tuple[Pki, Path, Path]:
    """The tests' PKI, its serving cert also for NODE_ADDRESS, and the apiserver's kubelet
    client cert (group system:masters)."""
    pki = create_pki(directory, extra_ips=(NODE_ADDRESS,))
    return pki, *create_client_cert(pki, "kube-apiserver-kubelet-client", "system:masters")


class NodeControlPlane(ControlPlane):
    """tests/cluster's control plane, with what a real node needs.

    Differences: the apiserver listens on NODE_ADDRESS (pods reach it through the
    `kubernetes` Service), authorizes with Node,RBAC, reconciles that Service's endpoints,
    and can reach the kubelet (logs, exec); token users for the node components; the
    controller manager runs every default controller (PV binding, node lifecycle).
    """

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        super().__init__(bin_dir, workdir)
        self.users = _node_users()
        self._kubelet_client: tuple[Path, Path] | None = None

    @property
    def server(self) -> str:
        return f"https://{NODE_ADDRESS}:{self.apiserver_port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki, *client = create_node_pki(self.workdir / "pki")
        self._kubelet_client = (client[0], client[1])
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig()
        self._start_controller_manager()

    def component_kubeconfig(self, component: str) -> Path:
        """A kubeconfig for kubelet, kube-scheduler or kube-proxy (their token users)."""
        user = self.users[component]
        return self.write_kubeconfig(
            self.workdir / f"{component}.kubeconfig", user.name, user.token
        )

    def _start_apiserver(self) -> None:
        assert self.pki is not None and self._kubelet_client is not None
        self.apiserver_port = free_port()
        token_file = self.workdir / "tokens.csv"
        lines = [f'{self.token},lorafuse-admin,lorafuse-admin,"system:masters"']
        for user in self.users.values():
            groups = f',"{",".join(user.groups)}"' if user.groups else ""
            lines.append(f"{user.token},{user.name},{user.name}{groups}")
        token_file.write_text("\n".join(lines) + "\n")
        token_file.chmod(0o600)
        argv = [
            self._binary("kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={NODE_ADDRESS}",
            f"--advertise-address={NODE_ADDRESS}",
            f"--secure-port={self.apiserver_port}",
            "--insecure-port=0",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={self.pki.serving_cert}",
            f"--tls-private-key-file={self.pki.serving_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            f"--token-auth-file={token_file}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-key-file={self.pki.service_account_key}",
            f"--service-account-signing-key-file={self.pki.service_account_key}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={self._kubelet_client[0]}",
            f"--kubelet-client-key={self._kubelet_client[1]}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]
        self._launch("kube-apiserver", argv, self._apiserver_ready)

    def _controller_manager_flags(self) -> list[str]:
        # All controllers (node lifecycle, endpoints for kube-proxy...), each with its own
        # service account, and the Service and pod networks of this node.
        return [
            "--controllers=*",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cluster-cidr={POD_CIDR}",
            "--allocate-node-cidrs=false",
            "--use-service-account-credentials=true",
        ]
