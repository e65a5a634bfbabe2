"""Signed models: one Ed25519 signature over the model file and its card together.

The card's SHA-256 pins the model file, but nothing pinned the card: its threshold or its
preprocessing could be edited freely. `sign_model` (workstation, private key) writes a
detached signature `<model file>.sig` beside the model; `verify_model_signature` (device,
public key) refuses the pair unless both files are byte for byte what was signed.

Signed message (UTF-8, exactly these three lines, each ending in a newline):

    leukedge model signature v1
    model sha256 <64 hex of the model file's bytes>
    card sha256 <64 hex of the card file's bytes>

File names are not signed: a renamed copy keeps its identity through the hashes, as it does
for the card. Keys are PEM files (private: PKCS#8, unencrypted, mode 0600; public:
SubjectPublicKeyInfo), made by `generate_keypair` / `leukedge keygen`. The key id is the
first 16 hex digits of the SHA-256 of the raw 32-byte public key. Cryptography: the
`cryptography` library (pyca), never own code.

Every device start without -q imports this module for `signature_status`; hashlib and base64 are
imported only where a key id is computed or a signature is encoded or decoded.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from .errors import LeukedgeError
from .files import write_text_atomic

SIGNATURE_SCHEMA = "leukedge.signature"
SIGNATURE_VERSION = 1
ALGORITHM = "Ed25519"
_MESSAGE_HEADER = "leukedge model signature v1"


class SignatureError(LeukedgeError, ValueError):
    """A model/card pair whose signature is missing, does not verify, or a key that cannot be used (one line)."""


def signature_path_for(model_path: str | os.PathLike) -> Path:
    """Where a model's detached signature lives: `<model file name>.sig` beside it."""
    p = Path(model_path)
    return p.with_name(p.name + ".sig")


def signed_message(model_sha256: str, card_sha256: str) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    return f"{_MESSAGE_HEADER}\nmodel sha256 {model_sha256}\ncard sha256 {card_sha256}\n".encode("utf-8")


def _raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte Ed25519 public key."""
    import hashlib

    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def _read_key_file(path: str | os.PathLike, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise SignatureError(f"{p}: {what} key file not found") from None
    except IsADirectoryError:
        raise SignatureError(f"{p}: is a folder, not a {what} key file") from None
    except OSError as exc:
        raise SignatureError(f"{p}: cannot read {what} key: {exc.strerror or exc}") from None


def load_private_key(path: str | os.PathLike):
    """Read an unencrypted PEM (PKCS#8) Ed25519 private key; raises SignatureError naming the file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key_file(path, "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # what cryptography raises for an encrypted key without a password
        raise SignatureError(f"{path}: private key is encrypted; leukedge signs with an unencrypted key file "
                             "(keep it offline, mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError(f"{path}: not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key (make one with: leukedge keygen)")
    return key


def load_public_key(path: str | os.PathLike):
    """Read a PEM Ed25519 public key (SubjectPublicKeyInfo); raises SignatureError naming the file."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key_file(path, "public")
    if b"PRIVATE KEY" in data:
        raise SignatureError(f"{path}: is a private key; give the device the public key (.pub) only")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise SignatureError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key (leukedge signatures are Ed25519)")
    return key


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike,
                     overwrite: bool = False) -> str:
    """Make a new Ed25519 key pair; returns its key id.

    private_path: written as unencrypted PEM PKCS#8 with mode 0600 (keep it on the workstation).
    public_path: PEM SubjectPublicKeyInfo, the file a device is given for --require-signature.
    Raises SignatureError if either file exists (unless overwrite) or cannot be written.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv_p, pub_p = Path(private_path), Path(public_path)
    if priv_p.resolve() == pub_p.resolve():
        raise SignatureError(f"{priv_p}: the private and the public key need two different files")
    if not overwrite:
        for p in (priv_p, pub_p):
            if p.exists():
                raise SignatureError(f"{p}: already exists; not overwriting a key (remove it first)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        priv_p.parent.mkdir(parents=True, exist_ok=True)
        pub_p.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if overwrite else os.O_EXCL)
        fd = os.open(priv_p, flags, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_pem)
        os.chmod(priv_p, 0o600)
        write_text_atomic(pub_p, public_pem.decode("ascii"))
    except OSError as exc:
        raise SignatureError(f"{exc.filename or priv_p}: cannot write key: {exc.strerror or exc}") from None
    return key_id(key.public_key())


def _card_for(model_path: Path, card_path: str | os.PathLike | None) -> Path:
    if card_path is not None:
        return Path(card_path)
    from .card import CardError, find_card_for

    try:
        return find_card_for(model_path)
    except CardError as exc:
        raise SignatureError(str(exc)) from None


def _hash(path: Path, what: str) -> str:
    from .card import verified_sha256  # the start-up path hashes a model once, through the verified-hash cache

    try:
        return verified_sha256(path)
    except FileNotFoundError:
        raise SignatureError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SignatureError(f"{path}: is a folder, not a {what}") from None
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def sign_model(model_path: str | os.PathLike, card_path: str | os.PathLike | None,
               private_key_path: str | os.PathLike) -> Path:
    """Sign a model and its card together; returns the signature file `<model file>.sig`.

    card_path: None finds the card beside the model (`<model file>.json`, or a schema-1 `<stem>.json`).
    Refuses (SignatureError) a card that does not describe this model file (its model SHA-256
    differs): signing must not bless a mismatched pair. Overwrites an earlier signature.
    """
    import base64

    from .card import CardError, load_card

    mp = Path(model_path)
    cp = _card_for(mp, card_path)
    key = load_private_key(private_key_path)
    model_sha = _hash(mp, "model file")
    card_sha = _hash(cp, "model card")
    try:
        card = load_card(cp)
    except CardError as exc:
        raise SignatureError(str(exc)) from None
    if card.model_sha256 != model_sha:
        raise SignatureError(f"{cp}: describes a model with SHA-256 {card.model_sha256[:12]}…, not {mp.name} "
                             f"({model_sha[:12]}…); refusing to sign a mismatched pair")
    signature = key.sign(signed_message(model_sha, card_sha))
    doc = {
        "schema": SIGNATURE_SCHEMA, "version": SIGNATURE_VERSION, "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "model": {"file": mp.name, "sha256": model_sha},
        "card": {"file": cp.name, "sha256": card_sha},
        "signed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    out = signature_path_for(mp)
    write_text_atomic(out, json.dumps(doc, indent=2) + "\n")
    return out


def _read_signature(model_path: Path) -> dict:
    sp = signature_path_for(model_path)
    try:
        doc = json.loads(sp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SignatureError(f"{model_path}: unsigned (no {sp.name} beside it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{sp}: unreadable signature file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SIGNATURE_SCHEMA:
        raise SignatureError(f"{sp}: not a leukedge signature file")
    if doc.get("version") != SIGNATURE_VERSION or doc.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{sp}: signature version {doc.get('version')!r} / algorithm {doc.get('algorithm')!r} "
                             f"not understood (this leukedge verifies version {SIGNATURE_VERSION}, {ALGORITHM})")
    return doc


def verify_model_signature(model_path: str | os.PathLike, card_path: str | os.PathLike | None,
                           public_key_path: str | os.PathLike) -> None:
    """Check that the model and its card are byte for byte what the holder of the key signed.

    card_path: None finds the card beside the model as `load_card_for_model` does.
    Returns None when they are; raises SignatureError (one line naming the file and the problem)
    when the signature file is missing or malformed, the key is missing or not Ed25519, the
    signature was made with another key, the model or the card changed since signing, or the
    signature does not verify.
    """
    import base64
    import binascii

    from cryptography.exceptions import InvalidSignature

    mp = Path(model_path)
    public = load_public_key(public_key_path)
    doc = _read_signature(mp)
    sp = signature_path_for(mp)
    kid = key_id(public)
    if doc.get("key_id") != kid:
        raise SignatureError(f"{sp}: signed with key {doc.get('key_id')}, not with {public_key_path} (key {kid})")
    cp = _card_for(mp, card_path)
    model_sha = _hash(mp, "model file")
    card_sha = _hash(cp, "model card")
    signed = doc.get("model", {}), doc.get("card", {})
    if signed[0].get("sha256") != model_sha:
        raise SignatureError(f"{mp}: model file changed since it was signed (SHA-256 {model_sha[:12]}…, "
                             f"signed {str(signed[0].get('sha256'))[:12]}…)")
    if signed[1].get("sha256") != card_sha:
        raise SignatureError(f"{cp}: model card changed since it was signed (SHA-256 {card_sha[:12]}…, "
                             f"signed {str(signed[1].get('sha256'))[:12]}…)")
    try:
        signature = base64.b64decode(str(doc.get("signature", "")), validate=True)
        public.verify(signature, signed_message(model_sha, card_sha))
    except (InvalidSignature, binascii.Error, ValueError):
        raise SignatureError(f"{sp}: signature does not verify with key {kid}; the signature file was altered") from None


def signature_status(model_path: str | os.PathLike) -> str:
    """One line for a log, without verifying: "signed (key <id>), not verified ..." or "unsigned: ..."."""
    mp = Path(model_path)
    try:
        doc = _read_signature(mp)
    except SignatureError as exc:
        if not signature_path_for(mp).exists():
            return (f"unsigned: no {signature_path_for(mp).name} beside {mp.name}; the card (threshold, "
                    "preprocessing) is not authenticated")
        return f"unsigned: {exc}"
    try:  # without the key nothing is proved, but a changed card or model is visible from the hashes alone
        cp = _card_for(mp, None)
        if (doc.get("card") or {}).get("sha256") != _hash(cp, "model card"):
            return (f"SIGNED BUT CHANGED: {cp.name} differs from what key {doc.get('key_id')} signed "
                    "(threshold or preprocessing edited?); pass --require-signature PUBKEY to refuse it")
        if (doc.get("model") or {}).get("sha256") != _hash(mp, "model file"):
            return f"SIGNED BUT CHANGED: {mp.name} differs from what key {doc.get('key_id')} signed"
    except SignatureError:
        pass
    return (f"signed (key {doc.get('key_id')}), not verified: pass --require-signature PUBKEY to check "
            "model and card before use")
