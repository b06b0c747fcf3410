"""The retention rule (workflow/retention.py) and the master key's configuration (config.py)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, strategies as st

from ehcp_record.config import ConfigError, load_settings
from ehcp_record.workflow.retention import due_records, erasure_due, parse_birth_date


def test_default_rule_is_the_25th_birthday_plus_the_configured_period():
    assert erasure_due(date(2000, 6, 15), 6) == date(2031, 6, 15)
    assert erasure_due(date(2000, 6, 15), 0) == date(2025, 6, 15)
    assert erasure_due(date(2004, 2, 29), 6) == date(2035, 2, 28)  # no 29 February that year


def test_partial_birth_dates_count_from_their_last_day():
    assert parse_birth_date("2004") == date(2004, 12, 31)
    assert parse_birth_date("2004-02") == date(2004, 2, 29)
    assert parse_birth_date("2004-02-03") == date(2004, 2, 3)
    assert parse_birth_date(None) is None


def test_due_records_skip_legal_holds_and_unknown_birth_dates():
    states = [{"_id": "a", "birth_date": "1990-01-01"}, {"_id": "b", "birth_date": "1990-01-01", "legal_hold": {"reason": "x"}},
              {"_id": "c"}, {"_id": "d", "birth_date": "2010-01-01"}, {"_id": "e", "birth_date": "1980-05-05"}]
    due = due_records(states, 6, date(2026, 12, 1))
    assert [d.record for d in due] == ["e", "a"]  # oldest first
    assert due[1].due == date(2021, 1, 1)


@given(birth=st.dates(min_value=date(1900, 1, 1), max_value=date(2070, 1, 1)), extra=st.integers(0, 25))
def test_due_from_the_anniversary_and_not_a_day_before(birth, extra):
    due = erasure_due(birth, extra)
    assert (due.year, due.month) == (birth.year + 25 + extra, birth.month) and due.day in (birth.day, 28)
    state = [{"_id": "r", "birth_date": birth.isoformat()}]
    assert due_records(state, extra, date.fromordinal(due.toordinal() - 1)) == []
    assert [d.record for d in due_records(state, extra, due)] == ["r"]


def test_the_local_key_file_is_refused_in_production():
    with pytest.raises(ConfigError, match="production needs a KMS master key"):
        load_settings({"env": "production", "dev_issuer": False, "local_sign_in": False}, environ={})


def test_a_kms_master_key_is_accepted_in_production():
    settings = load_settings({"env": "production", "dev_issuer": False, "local_sign_in": False,
                              "kms_providers": {"aws": {"accessKeyId": "AKIA...", "secretAccessKey": "s"}},
                              "master_key": {"provider": "aws", "region": "eu-west-2", "key": "arn:aws:kms:eu-west-2:1:key/x"}},
                             environ={})
    assert settings.master_key["provider"] == "aws"


@pytest.mark.parametrize("providers, master_key, message", [
    ({"aws": {"accessKeyId": "a"}}, {"provider": "aws", "region": "r", "key": "k"}, "secretAccessKey"),
    ({"azure": {"tenantId": "t", "clientId": "c", "clientSecret": "s"}}, {"provider": "azure", "keyName": "k"},
     "keyVaultEndpoint"),
    ({"gcp": {}}, {"provider": "gcp", "projectId": "p", "location": "l", "keyRing": "r"}, "keyName"),
    ({"kmip": {}}, {"provider": "kmip"}, "endpoint"),
    ({}, {"provider": "vault"}, "must be one of"),
    ({"aws": {}}, {"provider": "aws:two", "region": "r", "key": "k"}, "no 'aws:two' entry"),
    ({"aws": {}}, None, "needs EHCP_MASTER_KEY"),
])
def test_kms_configuration_shape_is_checked(providers, master_key, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"kms_providers": providers, "master_key": master_key}, environ={})


def test_on_demand_credentials_and_named_providers_are_accepted():
    settings = load_settings({"kms_providers": {"gcp:eu": {}}, "master_key": {
        "provider": "gcp:eu", "projectId": "p", "location": "l", "keyRing": "r", "keyName": "k"}}, environ={})
    assert settings.kms_providers == {"gcp:eu": {}}
