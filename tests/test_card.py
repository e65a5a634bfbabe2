import json

import pytest

from leukedge.edge.card import SCHEMA_VERSION, CardError, ModelCard, card_path_for, load_card, load_card_for_model
from leukedge.edge.preprocess import Preprocessing


def _card(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not really a model but hashed all the same")
    card = ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=96),
                     model_file="m.tflite", model_format="tflite", threshold=0.42)
    card.bind(model).save()
    assert card_path_for(model).name == "m.tflite.json"
    return model, card


def test_round_trip_keeps_every_field(tmp_path):
    model, card = _card(tmp_path)
    loaded = load_card_for_model(model)
    assert {**loaded.to_dict(), "created": ""} == {**card.to_dict(), "created": ""}
    assert loaded.threshold == 0.42
    assert loaded.preprocessing == card.preprocessing and loaded.positive_index == 1
    assert loaded.model_sha256 == card.model_sha256


def test_sha_mismatch_is_refused(tmp_path):
    model, _ = _card(tmp_path)
    model.write_bytes(b"tampered")
    with pytest.raises(CardError, match="does not match its card"):
        load_card_for_model(model)


def test_newer_schema_is_refused_with_a_message(tmp_path):
    _card(tmp_path)
    d = json.loads((tmp_path / "m.tflite.json").read_text())
    d["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "m.tflite.json").write_text(json.dumps(d))
    with pytest.raises(CardError, match="newer than this leukedge"):
        load_card(tmp_path / "m.tflite.json")


@pytest.mark.parametrize("field", ["labels", "preprocessing", "threshold", "model", "positive_label"])
def test_missing_fields_are_named(tmp_path, field):
    _card(tmp_path)
    d = json.loads((tmp_path / "m.tflite.json").read_text())
    del d[field]
    (tmp_path / "m.tflite.json").write_text(json.dumps(d))
    with pytest.raises(CardError, match=field):
        load_card(tmp_path / "m.tflite.json")


def test_invalid_json_and_missing_card(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(tmp_path / "bad.json")
    (tmp_path / "lonely.tflite").write_bytes(b"x")
    with pytest.raises(CardError, match="model card not found"):
        load_card_for_model(tmp_path / "lonely.tflite")


def test_invalid_values_are_rejected(tmp_path):
    _card(tmp_path)
    d = json.loads((tmp_path / "m.tflite.json").read_text())
    d["positive_label"] = "blast"
    (tmp_path / "m.tflite.json").write_text(json.dumps(d))
    with pytest.raises(CardError, match="positive label"):
        load_card(tmp_path / "m.tflite.json")


def test_cards_never_collide_and_legacy_stem_cards_still_load(tmp_path):
    keras, onnx = tmp_path / "model.keras", tmp_path / "model.onnx"
    for f, fmt in ((keras, "keras"), (onnx, "onnx")):
        f.write_bytes(fmt.encode() * 10)
        ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=96),
                  model_file=f.name, model_format=fmt).bind(f).save()
    assert load_card_for_model(keras).model_format == "keras" and load_card_for_model(onnx).model_format == "onnx"
    # a schema-1 card named <stem>.json is read for the model it names, and only for that one
    legacy = tmp_path / "old"
    legacy.mkdir()
    m = legacy / "int8.tflite"
    m.write_bytes(b"weights")
    d = ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=96),
                  model_file="int8.tflite", model_format="tflite").bind(m).to_dict()
    d["schema_version"] = 1
    for k in ("output", "calibration", "input_statistics", "golden", "onnx", "requires"):
        del d[k]
    (legacy / "int8.json").write_text(json.dumps(d))
    assert load_card_for_model(m).schema_version == 1
    other = legacy / "int8.onnx"
    other.write_bytes(b"x")
    with pytest.raises(CardError, match="not found"):
        load_card_for_model(other)


def test_unknown_required_feature_is_refused_in_one_line(tmp_path):
    model, _ = _card(tmp_path)
    d = json.loads(card_path_for(model).read_text())
    d["requires"] = ["temperature", "hyperspectral"]
    card_path_for(model).write_text(json.dumps(d))
    with pytest.raises(CardError, match="requires hyperspectral") as exc:
        load_card_for_model(model)
    assert "\n" not in str(exc.value)


def test_requires_lists_what_the_device_must_do(tmp_path):
    model, card = _card(tmp_path)
    assert card.requires == []
    card.output, card.calibration = "logits", {"temperature": 1.7}
    card.save()
    loaded = load_card_for_model(model)
    assert loaded.requires == ["logits", "temperature"] and loaded.to_dict()["requires"] == ["logits", "temperature"]


@pytest.mark.parametrize("path,value,needle", [
    (("threshold",), float("nan"), "threshold"),
    (("threshold",), True, "threshold"),
    (("threshold",), "0.5", "threshold"),
    (("labels",), "hem,all", "labels"),
    (("model", "size_bytes"), 1.5, "size_bytes"),
    (("model", "sha256"), "xyz", "sha256"),
    (("calibration",), {"temperature": float("nan")}, "temperature"),
    (("output",), "sigmoid", "output"),
    (("verdict",), "pass", "verdict"),
])
def test_values_are_validated_not_coerced(tmp_path, path, value, needle):
    model, _ = _card(tmp_path)
    d = json.loads(card_path_for(model).read_text())
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    card_path_for(model).write_text(json.dumps(d))
    with pytest.raises(CardError, match=needle):
        load_card_for_model(model)


def test_verified_hash_cache_follows_file_identity(tmp_path, monkeypatch):
    """The SHA-256 is cached under (device, inode, size, mtime_ns, ctime_ns): a same-size rewrite with the
    old mtime restored (what `cp -p` or `touch -d` can fake) still changes ctime and is re-hashed."""
    import os

    import leukedge.edge.card as card_mod

    monkeypatch.setenv("LEUKEDGE_CACHE", str(tmp_path / "cache"))
    model, _ = _card(tmp_path)
    calls = []
    real = card_mod.sha256_file
    monkeypatch.setattr(card_mod, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    load_card_for_model(model)
    load_card_for_model(model)
    assert len(calls) == 1, "second start must come from the cache"
    st = model.stat()
    data = bytearray(model.read_bytes())
    data[0] ^= 1  # same size, different content
    model.write_bytes(bytes(data))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # forge the old mtime
    with pytest.raises(CardError, match="does not match its card"):
        load_card_for_model(model)
    assert len(calls) == 2
    monkeypatch.setenv("LEUKEDGE_HASH_CACHE", "0")
    data[0] ^= 1
    model.write_bytes(bytes(data))
    load_card_for_model(model)
    load_card_for_model(model)
    assert len(calls) == 4


def test_a_deeply_nested_card_is_one_line_not_a_recursion_error(tmp_path):
    """Issue 20: a 100,000-deep value in a card used to raise RecursionError (a traceback on the device)."""
    from leukedge.edge.card import CardError, load_card

    path = tmp_path / "m.tflite.json"
    path.write_text('{"schema": "leukedge.model-card", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CardError, match="not valid JSON.*nested deeper"):
        load_card(path)
