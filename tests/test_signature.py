"""Ed25519 signatures over model + card: sign on the workstation, verify on the device."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from leukedge.edge.card import find_card_for, load_card
from leukedge.edge.errors import LeukedgeError
from leukedge.edge.signature import (SignatureError, generate_keypair, key_id, load_public_key, sign_model,
                                     signature_path_for, signature_status, signed_message, verify_model_signature)
from helpers import make_card


@pytest.fixture
def model(tmp_path) -> Path:
    """A stand-in model file with its card: signing never looks inside the model."""
    path = tmp_path / "int8.tflite"
    path.write_bytes(os.urandom(4096))
    make_card(path, 64, "int8", "tflite", threshold=0.42)
    return path


@pytest.fixture
def keys(tmp_path):
    priv, pub = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    kid = generate_keypair(priv, pub)
    return priv, pub, kid


def test_sign_then_verify(model, keys):
    priv, pub, kid = keys
    sig = sign_model(model, None, priv)
    assert sig == signature_path_for(model) == model.with_name("int8.tflite.sig")
    doc = json.loads(sig.read_text())
    assert doc["key_id"] == kid == key_id(load_public_key(pub)) and doc["algorithm"] == "Ed25519"
    card = find_card_for(model)
    assert doc["card"]["file"] == card.name and doc["model"]["file"] == model.name
    verify_model_signature(model, None, pub)
    verify_model_signature(model, card, pub)
    assert signature_status(model).startswith(f"signed (key {kid})")
    # the signature is a real Ed25519 signature over the documented message
    load_public_key(pub).verify(base64.b64decode(doc["signature"]),
                                signed_message(doc["model"]["sha256"], doc["card"]["sha256"]))


def test_private_key_is_private(keys):
    priv, pub, _ = keys
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(SignatureError, match="already exists"):
        generate_keypair(priv, pub.with_name("other.pub"))


def test_edited_card_threshold_is_refused(model, keys):
    priv, pub, _ = keys
    sign_model(model, None, priv)
    card_path = find_card_for(model)
    d = json.loads(card_path.read_text())
    d["threshold"] = 0.05
    card_path.write_text(json.dumps(d, indent=2))
    assert load_card(card_path).threshold == 0.05  # still a valid card: only the signature catches it
    with pytest.raises(SignatureError, match="card changed since it was signed") as err:
        verify_model_signature(model, None, pub)
    assert card_path.name in str(err.value) and "\n" not in str(err.value)
    # without the key nothing is proved, but the start-up line says the card is not what was signed
    assert signature_status(model).startswith("SIGNED BUT CHANGED") and card_path.name in signature_status(model)


def test_replaced_model_is_refused(model, keys):
    priv, pub, _ = keys
    sign_model(model, None, priv)
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="model file changed since it was signed"):
        verify_model_signature(model, None, pub)


def test_other_key_is_refused(model, keys, tmp_path):
    priv, _, _ = keys
    sign_model(model, None, priv)
    other_pub = tmp_path / "other.pub"
    generate_keypair(tmp_path / "other.key", other_pub)
    with pytest.raises(SignatureError, match="signed with key"):
        verify_model_signature(model, None, other_pub)


def test_forged_signature_file_is_refused(model, keys, tmp_path):
    """Someone edits the card and rewrites the hashes in the .sig: the signature no longer verifies."""
    priv, pub, _ = keys
    sig = sign_model(model, None, priv)
    card_path = find_card_for(model)
    d = json.loads(card_path.read_text())
    d["threshold"] = 0.9
    card_path.write_text(json.dumps(d))
    import hashlib

    doc = json.loads(sig.read_text())
    doc["card"]["sha256"] = hashlib.sha256(card_path.read_bytes()).hexdigest()
    sig.write_text(json.dumps(doc))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_model_signature(model, None, pub)


def test_missing_signature_and_bad_keys(model, keys, tmp_path):
    priv, pub, _ = keys
    with pytest.raises(SignatureError, match="unsigned"):
        verify_model_signature(model, None, pub)
    assert signature_status(model).startswith("unsigned")
    sign_model(model, None, priv)
    with pytest.raises(SignatureError, match="public key file not found"):
        verify_model_signature(model, None, tmp_path / "nope.pub")
    with pytest.raises(SignatureError, match="is a private key"):
        verify_model_signature(model, None, priv)
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    with pytest.raises(SignatureError, match="not a PEM public key"):
        verify_model_signature(model, None, junk)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(SignatureError, match="not an Ed25519 public key"):
        verify_model_signature(model, None, ec_pub)
    signature_path_for(model).write_text("{broken")
    with pytest.raises(SignatureError, match="unreadable signature file"):
        verify_model_signature(model, None, pub)
    assert issubclass(SignatureError, LeukedgeError)


def test_refuses_to_sign_a_card_of_another_model(model, keys, tmp_path):
    priv, _, _ = keys
    other = tmp_path / "other.tflite"
    other.write_bytes(b"another model")
    with pytest.raises(SignatureError, match="mismatched pair"):
        sign_model(other, find_card_for(model), priv)


def test_cli_keygen_and_sign(model, tmp_path):
    from leukedge.cli import main

    runner = CliRunner()
    priv, pub = tmp_path / "k" / "lab.key", tmp_path / "k" / "lab.pub"
    res = runner.invoke(main, ["keygen", str(priv), "--public", str(pub)])
    assert res.exit_code == 0, res.output
    assert priv.exists() and pub.exists()
    res = runner.invoke(main, ["sign", str(model), "--key", str(priv)])
    assert res.exit_code == 0, res.output
    assert "int8.tflite.sig" in res.output
    verify_model_signature(model, None, pub)
    res = runner.invoke(main, ["sign", str(model), "--key", str(pub)])  # the public key cannot sign
    assert res.exit_code == 2 and "not a PEM private key" in res.output
