"""The embedded mongod with access control: a keyfile and a SCRAM user in the data dir.

A client without the credentials reads nothing; the server's own connection string works; the
files are the owner's only; a data dir written before access control existed is upgraded with
its data kept, and one whose users we hold no credentials for is refused with the reason.
"""

from __future__ import annotations

import stat
import subprocess

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from ehcp_record.store.mongod import REPLICA_SET, EmbeddedMongo, EmbeddedMongoError, free_port, mongod_binary, running_uri
from ehcp_record.store.mongod_auth import CREDENTIALS, KEYFILE


def _bare_uri(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?replicaSet={REPLICA_SET}&serverSelectionTimeoutMS=5000"


def test_a_client_without_credentials_reads_nothing(mongo):
    with MongoClient(mongo.uri) as client:
        client.auth_probe.kept.insert_one({"name": "Sam Example"})
    with MongoClient(_bare_uri(mongo.port)) as bare:
        for read in (lambda: bare.auth_probe.kept.find_one(), lambda: bare.list_database_names(),
                     lambda: bare.auth_probe.list_collection_names(), lambda: bare.admin.command("replSetGetStatus")):
            with pytest.raises(OperationFailure) as refused:
                read()
            assert refused.value.code == 13  # Unauthorized
    with MongoClient(mongo.uri) as client:
        assert client.auth_probe.kept.find_one()["name"] == "Sam Example"
        client.drop_database("auth_probe")


def test_wrong_credentials_are_refused(mongo):
    uri = mongo.uri.replace(mongo.credentials.password, "not-the-password")
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client, pytest.raises(OperationFailure) as refused:
        client.auth_probe.kept.find_one()
    assert refused.value.code == 18  # AuthenticationFailed


def test_the_keyfile_and_credentials_are_the_owners_only(mongo):
    for name in (KEYFILE, CREDENTIALS):
        mode = stat.S_IMODE((mongo.data_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert mongo.credentials.password not in (mongo.data_dir / "mongod.log").read_text()
    assert running_uri(mongo.data_dir) == mongo.uri  # tools beside the server use the same credentials


def test_a_pre_auth_data_dir_is_upgraded_and_one_with_unknown_users_refused(tmp_path):
    """Written by a mongod without access control (as every data dir before this change was):
    the next start turns it on and keeps the data. Then, with the credentials file lost, the
    database has a user we cannot name: refused, with the file to restore."""
    db_path, port = tmp_path / "db", free_port()
    db_path.mkdir()
    old = subprocess.Popen([str(mongod_binary()), "--dbpath", str(db_path), "--port", str(port), "--bind_ip", "127.0.0.1",
                            "--replSet", REPLICA_SET, "--logpath", str(tmp_path / "old.log"),
                            "--setParameter", "diagnosticDataCollectionEnabled=false"])
    try:
        with MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=20000) as client:
            client.admin.command("replSetInitiate", {"_id": REPLICA_SET, "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
        with MongoClient(_bare_uri(port).replace("5000", "20000"), w="majority") as client:
            client.before_auth.kept.insert_one({"_id": "written-without-auth"})
    finally:
        old.terminate()
        old.wait(30)
    (tmp_path / "mongod.port").write_text(str(port))

    upgraded = EmbeddedMongo(tmp_path).start()
    try:
        with MongoClient(upgraded.uri) as client:
            assert client.before_auth.kept.find_one({"_id": "written-without-auth"}) is not None
        with MongoClient(_bare_uri(upgraded.port)) as bare, pytest.raises(OperationFailure):
            bare.before_auth.kept.find_one()
    finally:
        upgraded.stop()

    (tmp_path / CREDENTIALS).unlink()
    with pytest.raises(EmbeddedMongoError, match="has users, but the credentials in .*mongod.credentials"):
        EmbeddedMongo(tmp_path).start()
