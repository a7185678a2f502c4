"""Keys and certificates of the test control plane: CA, apiserver serving cert, SA key."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

# Names a pod may use for the apiserver: in-cluster clients dial the service name or
# KUBERNETES_SERVICE_HOST (127.0.0.1 here).
SERVING_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVING_IPS = ("127.0.0.1", "10.0.0.1")
CA_NAME = "lorafuse-test-ca"


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files the components are started with."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    service_account_key: Path


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: str, issuer: str, public_key,
             organization: str | None = None) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    names = [x509.NameAttribute(NameOID.COMMON_NAME, subject)]
    if organization:  # Kubernetes reads a client cert's O as its group
        names.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def create_pki(directory: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Write a fresh CA, an apiserver serving cert signed by it (also valid for `extra_ips`)
    and a service-account key; the CA's key is kept for client certs (create_client_cert)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_cert = (
        _builder(CA_NAME, CA_NAME, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = _new_key()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVING_DNS_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (*SERVING_IPS, *extra_ips)]
    serving_cert = (
        _builder("kube-apiserver", CA_NAME, serving_key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        service_account_key=directory / "service-account.key",
    )
    _write_cert(ca_cert, pki.ca_cert)
    _write_key(ca_key, directory / "ca.key")
    _write_cert(serving_cert, pki.serving_cert)
    _write_key(serving_key, pki.serving_key)
    _write_key(_new_key(), pki.service_account_key)
    return pki


def create_client_cert(pki: Pki, name: str, organization: str) -> tuple[Path, Path]:
    """A client cert (CN `name`, O `organization`) signed by the CA; its cert and key paths."""
    ca_key = serialization.load_pem_private_key(
        (pki.ca_cert.parent / "ca.key").read_bytes(), password=None
    )
    key = _new_key()
    cert = (
        _builder(name, CA_NAME, key.public_key(), organization)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = pki.ca_cert.parent / f"{name}.crt", pki.ca_cert.parent / f"{name}.key"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path
