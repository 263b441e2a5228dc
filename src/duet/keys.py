"""Key generation, loading, signing and fingerprints.

Owner and controller keys are Ed25519 by default; ECDSA P-256 and RSA (PSS) are accepted so
that existing key material can be used. A key id is the SHA-256 hex of the DER
SubjectPublicKeyInfo, so it names the key itself, whatever file or format it came in.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Literal, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from duet.errors import ConfigError

KeyType = Literal["ed25519", "ecdsa", "rsa"]
PrivateKey = Union[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
PublicKey = Union[ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey, rsa.RSAPublicKey]

KEY_TYPES: tuple[str, ...] = ("ed25519", "ecdsa", "rsa")


def generate(key_type: KeyType = "ed25519") -> PrivateKey:
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ConfigError(f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}", code="bad_key_type")


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_der(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKey) -> str:
    """SHA-256 hex of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_der(key)).hexdigest()


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write the private key with mode 0600 from the first byte on, never world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, private_pem(key))
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def write_key_pair(path: Path, key: PrivateKey) -> Path:
    """Write ``path`` (private, 0600) and ``path.pub`` (public PEM); return the public path."""
    write_private_key(path, key)
    pub_path = path.with_name(path.name + ".pub")
    pub_path.write_bytes(public_pem(key.public_key()))
    return pub_path


def _check_supported(key: object, path: Path | str) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path}: only the P-256 curve is accepted for ECDSA keys", code="bad_key")
    if not isinstance(
        key,
        ed25519.Ed25519PrivateKey
        | ed25519.Ed25519PublicKey
        | ec.EllipticCurvePrivateKey
        | ec.EllipticCurvePublicKey
        | rsa.RSAPrivateKey
        | rsa.RSAPublicKey,
    ):
        raise ConfigError(f"{path}: unsupported key type {type(key).__name__}", code="bad_key")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ConfigError(f"{path}: an RSA key of {key.key_size} bits is too weak; at least {MIN_RSA_BITS}", code="bad_key")


MIN_RSA_BITS = 2048
"""RSA keys below this size are refused everywhere a key is loaded (owner keys, governed additions)."""


def load_private_key(path: Path | str) -> PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read private key {path}: {exc.strerror}", code="key_unreadable") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key", code="bad_key") from None
    _check_supported(key, path)
    return key  # type: ignore[return-value]


def load_public_key_bytes(data: bytes, source: str = "public key") -> PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"{source} is not a PEM public key (SubjectPublicKeyInfo)", code="bad_key") from None
    _check_supported(key, source)
    return key  # type: ignore[return-value]


def load_public_key(path: Path | str) -> PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read public key {path}: {exc.strerror}", code="key_unreadable") from None
    return load_public_key_bytes(data, str(path))


_PSS_SIGN = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
_PSS_VERIFY = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)


def sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, _PSS_SIGN, hashes.SHA256())


def verify(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, data, _PSS_VERIFY, hashes.SHA256())
    except InvalidSignature:
        return False
    return True
