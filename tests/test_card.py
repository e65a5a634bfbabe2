import json

import pytest

from leukedge.edge.card import SCHEMA_VERSION, CardError, ModelCard, load_card, load_card_for_model
from leukedge.edge.preprocess import Preprocessing


def _card(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not really a model but hashed all the same")
    card = ModelCard(labels=["hem", "all"], positive_label="all", preprocessing=Preprocessing(size=96),
                     model_file="m.tflite", model_format="tflite", threshold=0.42)
    card.bind(model).save(tmp_path / "m.json")
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
    d = json.loads((tmp_path / "m.json").read_text())
    d["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "m.json").write_text(json.dumps(d))
    with pytest.raises(CardError, match="newer than this leukedge"):
        load_card(tmp_path / "m.json")


@pytest.mark.parametrize("field", ["labels", "preprocessing", "threshold", "model", "positive_label"])
def test_missing_fields_are_named(tmp_path, field):
    _card(tmp_path)
    d = json.loads((tmp_path / "m.json").read_text())
    del d[field]
    (tmp_path / "m.json").write_text(json.dumps(d))
    with pytest.raises(CardError, match=field):
        load_card(tmp_path / "m.json")


def test_invalid_json_and_missing_card(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_card(tmp_path / "bad.json")
    (tmp_path / "lonely.tflite").write_bytes(b"x")
    with pytest.raises(CardError, match="model card not found"):
        load_card_for_model(tmp_path / "lonely.tflite")


def test_invalid_values_are_rejected(tmp_path):
    _card(tmp_path)
    d = json.loads((tmp_path / "m.json").read_text())
    d["positive_label"] = "blast"
    (tmp_path / "m.json").write_text(json.dumps(d))
    with pytest.raises(CardError, match="positive label"):
        load_card(tmp_path / "m.json")
