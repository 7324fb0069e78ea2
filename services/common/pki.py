"""The cluster's certificate authority: making it, and issuing and signing certificates.

Python's `cryptography` does the x509 work; nothing here is hand-rolled. Keys are ECDSA
P-256 (kubeadm's --encryption-algorithm=ECDSA-P256): a key is made in about a
millisecond and a TLS handshake costs a fraction of RSA's, which matters when `make up`
and the tests make dozens of them. Certificates name users as Kubernetes does: the
common name is the user, each organization a group.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
CERTIFICATE_VALIDITY = datetime.timedelta(days=365)
# Certificates start a little in the past so that a peer whose clock is slightly behind
# does not refuse a certificate made a second ago.
CLOCK_SKEW = datetime.timedelta(minutes=5)

CLIENT = "client"
SERVER = "server"
# Kubernetes' signer names: a kubelet's client certificate and its serving certificate
# (what a joining kubelet asks Certificates.Sign for, and what the API server signs).
KUBELET_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
KUBELET_SERVING_SIGNER = "kubernetes.io/kubelet-serving"
_USAGE_OIDS = {CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH, SERVER: ExtendedKeyUsageOID.SERVER_AUTH}


class CertificateError(ValueError):
    """A certificate request the CA will not sign, or a file that is not what it should be."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def subject_name(common_name: str, organizations: Iterable[str] = ()) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _alternative_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses, told apart by whether they parse as an address."""
    result: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    certificate: bytes
    key: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Writes <stem>.crt and <stem>.key (the key readable by its owner only)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
        _write_private(key_path, self.key)
        cert_path.write_bytes(self.certificate)
        return cert_path, key_path

    @classmethod
    def read(cls, directory: Path, stem: str) -> KeyPair:
        return cls((directory / f"{stem}.crt").read_bytes(), (directory / f"{stem}.key").read_bytes())


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


class CertificateAuthority:
    """A CA certificate and its key: issues certificates for the cluster's identities."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    @property
    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    @classmethod
    def create(
        cls, common_name: str = "kybernetes-ca", *, valid_for: datetime.timedelta = CA_VALIDITY
    ) -> CertificateAuthority:
        key = new_private_key()
        name = subject_name(common_name)
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + valid_for)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    def save(self, directory: Path, stem: str = "ca") -> None:
        KeyPair(self.certificate_pem, key_pem(self.key)).write(directory, stem)

    @classmethod
    def load(cls, directory: Path, stem: str = "ca") -> CertificateAuthority:
        return cls.from_files(directory / f"{stem}.crt", directory / f"{stem}.key")

    @classmethod
    def from_files(cls, cert_file: str | Path, key_file: str | Path) -> CertificateAuthority:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError(f"{key_file}: not an ECDSA key")
        return cls(x509.load_pem_x509_certificate(Path(cert_file).read_bytes()), key)

    @classmethod
    def load_or_create(
        cls, directory: Path, stem: str = "ca", common_name: str = "kybernetes-ca"
    ) -> CertificateAuthority:
        if (directory / f"{stem}.key").exists():
            return cls.load(directory, stem)
        ca = cls.create(common_name)
        ca.save(directory, stem)
        return ca

    def _sign(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        *,
        usages: Iterable[str],
        names: Iterable[str],
        valid_for: datetime.timedelta,
        not_before: datetime.datetime | None = None,
    ) -> x509.Certificate:
        start = not_before or (_now() - CLOCK_SKEW)
        usage_list = list(dict.fromkeys(usages))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + CLOCK_SKEW + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([_USAGE_OIDS[u] for u in usage_list]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        alternative = _alternative_names(names)
        if alternative:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue(
        self,
        common_name: str,
        *,
        organizations: Iterable[str] = (),
        names: Iterable[str] = (),
        usages: Iterable[str] = (CLIENT,),
        valid_for: datetime.timedelta = CERTIFICATE_VALIDITY,
        not_before: datetime.datetime | None = None,
    ) -> KeyPair:
        """A new key and a certificate for it. `names` are the DNS names and IP addresses a
        server is reached by; `usages` "client" and/or "server"."""
        key = new_private_key()
        certificate = self._sign(
            subject_name(common_name, organizations),
            key.public_key(),
            usages=usages,
            names=names,
            valid_for=valid_for,
            not_before=not_before,
        )
        return KeyPair(certificate_pem(certificate), key_pem(key))

    def sign_request(
        self, request_pem: bytes, *, usages: Iterable[str], valid_for: datetime.timedelta = CERTIFICATE_VALIDITY
    ) -> tuple[bytes, x509.CertificateSigningRequest]:
        """Signs a PEM certificate signing request as asked (the caller decided it may);
        returns the certificate and the parsed request."""
        try:
            request = x509.load_pem_x509_csr(request_pem)
        except ValueError as error:
            raise CertificateError(f"not a PEM certificate request: {error}") from None
        if not request.is_signature_valid:
            raise CertificateError("the request's signature does not match its key")
        public_key = request.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CertificateError("the request's key must be ECDSA (P-256)")
        alternative = alternative_names(request.extensions)
        certificate = self._sign(request.subject, public_key, usages=usages, names=alternative, valid_for=valid_for)
        return certificate_pem(certificate), request


def alternative_names(extensions: x509.Extensions) -> list[str]:
    """The DNS names and IP addresses of a certificate's (or request's) subject alternative names."""
    try:
        names = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n) for n in names.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)
    ]


def still_good(
    certificate_pem: bytes,
    *,
    renew_before: datetime.timedelta,
    names: Iterable[str] = (),
    subject: tuple[str, tuple[str, ...]] | None = None,
) -> bool:
    """Whether a certificate can be kept: not within `renew_before` of its end, covering
    `names`, and naming `subject` (common name, organizations) when given."""
    certificate = x509.load_pem_x509_certificate(certificate_pem)
    if certificate.not_valid_after_utc - _now() < renew_before:
        return False
    if not set(names) <= set(alternative_names(certificate.extensions)):
        return False
    if subject is not None:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        groups = tuple(str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
        if not common or str(common[0].value) != subject[0] or groups != subject[1]:
            return False
    return True


def certificate_request(
    common_name: str, organizations: Iterable[str] = (), names: Iterable[str] = ()
) -> tuple[bytes, bytes]:
    """A new key and a PEM certificate signing request for it (what a joining node sends)."""
    key = new_private_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject_name(common_name, organizations))
    alternative = _alternative_names(names)
    if alternative:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
    request = builder.sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM), key_pem(key)
