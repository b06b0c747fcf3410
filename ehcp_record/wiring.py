"""The composition root: one place that builds the repository, rules and services from settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ehcp_record.access.policy import AccessPolicy
from ehcp_record.access.compartment import Compartment
from ehcp_record.config import Settings
from ehcp_record.operations.audit_log import AuditLog
from ehcp_record.audit.verify import trusted_keys
from ehcp_record.errors import FhirError
from ehcp_record.plan.gate import ParentalInputGate
from ehcp_record.plan.documents import DocumentService
from ehcp_record.operations.everything import EverythingService
from ehcp_record.operations.media import MediaService
from ehcp_record.store.media import MediaStore
from ehcp_record.fhir.validator import ProfileValidator
from ehcp_record.operations.proposals import ProposalService
from ehcp_record.notifications.subscriptions import SubscriptionService
from ehcp_record.transfer.service import TransferService
from ehcp_record.transfer.receive import ReceiveTransfer
from ehcp_record.store.transfers import TransferStore
from ehcp_record.operations.validate import ValidateOperation
from ehcp_record.plan.validation import ProfileChecks
from ehcp_record.access.scoped import RecordService
from ehcp_record.store.repository import Repository
from ehcp_record.fhir.search import SearchRegistry
from ehcp_record.audit.signing import load_or_create_private_key


@dataclass
class Services:
    settings: Settings
    repo: Repository
    registry: SearchRegistry
    access: AccessPolicy
    records: RecordService
    proposals: ProposalService
    audit_log: AuditLog
    documents: DocumentService
    everything: EverythingService
    media: MediaService
    validate: ValidateOperation
    transfers: TransferService
    receive_transfer: "ReceiveTransfer | None" = None
    verifier: Any = None  # api.auth.TokenVerifier, set by the API (Flask-free here)


def build_services(settings: Settings) -> Services:
    if not settings.mongodb_uri:
        raise FhirError(500, "exception", "no database: set EHCP_MONGODB_URI or start with `ehcp-record serve`")
    signing_key = load_or_create_private_key(settings.signing_key_path)
    repo = Repository.connect(settings.mongodb_uri, settings.database, signing_key)
    registry = SearchRegistry.load(settings.profiles_dir / "SearchParameter")
    compartment = Compartment.load(settings.profiles_dir / "CompartmentDefinition" / "ehcp-record.json", registry)
    access = AccessPolicy(repo)
    checks = ProfileChecks(ProfileValidator.load(settings.profiles_dir))
    records = RecordService(repo, registry, compartment, access, validator=checks, gate=ParentalInputGate(repo))
    records.subscriptions = SubscriptionService(records, allow_plain_http=settings.env != "production")
    documents = DocumentService(records, settings.base_url)
    proposals = ProposalService(records, documents)
    audit_log = AuditLog(records, settings.base_url, trusted_keys(settings))
    media = MediaService(records, MediaStore(repo.db), settings.max_binary_bytes)
    services = Services(settings, repo, registry, access, records, proposals, audit_log, documents,
                    EverythingService(records), media, ValidateOperation(records, checks),
                    TransferService(records, settings, TransferStore(repo), media))
    services.receive_transfer = ReceiveTransfer(records, services.transfers, services.transfers.store, media.store)
    return services
