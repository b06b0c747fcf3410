"""The composition root: one place that builds the repository, rules and services from settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehcp_record.access import AccessPolicy
from ehcp_record.compartment import Compartment
from ehcp_record.config import Settings
from ehcp_record.context import Caller
from ehcp_record.errors import FhirError
from ehcp_record.records import RecordService, SearchResult
from ehcp_record.repository import Repository, Version
from ehcp_record.search import SearchRegistry


@dataclass
class Services:
    settings: Settings
    repo: Repository
    registry: SearchRegistry
    access: AccessPolicy
    records: RecordService
    verifier: Any = None  # api.auth.TokenVerifier, set by the API (Flask-free here)

    def read(self, caller: Caller, resource_type: str, resource_id: str) -> tuple[Version, dict]:
        return self.records.read(caller, resource_type, resource_id)

    def vread(self, caller: Caller, resource_type: str, resource_id: str, vid: str) -> tuple[Version, dict]:
        return self.records.vread(caller, resource_type, resource_id, vid)

    def search(self, caller: Caller, resource_type: str, pairs: list[tuple[str, str]]) -> SearchResult:
        return self.records.search(caller, resource_type, pairs)


def build_services(settings: Settings) -> Services:
    if not settings.mongodb_uri:
        raise FhirError(500, "exception", "no database: set EHCP_MONGODB_URI or start with `ehcp-record serve`")
    repo = Repository.connect(settings.mongodb_uri, settings.database)
    registry = SearchRegistry.load(settings.profiles_dir / "SearchParameter")
    compartment = Compartment.load(settings.profiles_dir / "CompartmentDefinition" / "ehcp-record.json", registry)
    access = AccessPolicy(repo)
    records = RecordService(repo, registry, compartment, access)
    return Services(settings, repo, registry, access, records)
