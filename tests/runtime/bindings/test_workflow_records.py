"""The codec the workflows binding gives its instances: records sealed with the data key; no key,
or another key than the one that sealed them, is a 503 naming what to configure."""

from __future__ import annotations

import os

import pytest

from runtime.bindings.workflows import WorkflowsUnavailable, record_codec
from runtime.datakey import DataKey

RECORD = {"id": "s-1", "status": "queued", "params": {"email": "ada@example.com"}}


def key() -> DataKey:
    return DataKey(os.urandom(32), "test")


def test_records_are_sealed_with_the_data_key_and_open_with_it():
    codec = record_codec(key())
    stored = codec.seal_record("Signup.__workflow__", "a" * 64, "meta", RECORD)
    assert "params" not in stored and DataKey.is_sealed(stored["sealed"])
    assert codec.open_record("Signup.__workflow__", "a" * 64, "meta", stored) == RECORD


def test_without_a_key_nothing_is_sealed_and_the_error_names_the_variables():
    codec = record_codec(None)
    with pytest.raises(WorkflowsUnavailable) as refused:
        codec.check()
    assert (refused.value.code, refused.value.status) == ("workflows_unavailable", 503)
    assert "EDGEWORKS_DATA_KEY_FILE" in refused.value.message and not codec.can_seal()
    with pytest.raises(WorkflowsUnavailable):
        codec.seal_record("Signup.__workflow__", "a" * 64, "meta", RECORD)
    assert codec.open_record("Signup.__workflow__", "a" * 64, "meta", RECORD) == RECORD  # clear: read as is


def test_records_sealed_with_another_key_are_a_503_naming_both_keys():
    sealer, other = key(), key()
    stored = record_codec(sealer).seal_record("Signup.__workflow__", "a" * 64, "meta", RECORD)
    with pytest.raises(WorkflowsUnavailable, match=f"{sealer.key_id}.*{other.key_id}"):
        record_codec(other).open_record("Signup.__workflow__", "a" * 64, "meta", stored)
