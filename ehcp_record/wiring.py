"""The composition root: the one place that builds the repository, rules and services.

It is the only module outside the store package and the scoped store that sees the raw
repository: it hands the repository to the `RecordStore`, and everything else receives a
caller-scoped store per request (import-linter contracts in the test suite check this).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from ehcp_record.access.compartment import Compartment
from ehcp_record.access.scoped import RecordStore
from ehcp_record.analytics.extract import Extract
from ehcp_record.analytics.pseudonym import Pseudonymiser
from ehcp_record.analytics.service import AnalyticsService
from ehcp_record.audit.anchor import AnchorLog, FileAnchorLog
from ehcp_record.audit.signing import load_or_create_private_key
from ehcp_record.audit.verify import trusted_keys, verify_all
from ehcp_record.config import Settings
from ehcp_record.errors import FhirError
from ehcp_record.fhir.conformance import ConformanceLibrary
from ehcp_record.fhir.search import SearchRegistry
from ehcp_record.fhir.validator import ProfileValidator
from ehcp_record.identity.service import IdentityService
from ehcp_record.notifications.subscriptions import SubscriptionService
from ehcp_record.operations.assessment import AssessmentService
from ehcp_record.operations.audit_log import AuditLog
from ehcp_record.operations.everything import EverythingService
from ehcp_record.operations.media import MediaService
from ehcp_record.operations.notices import NoticeService
from ehcp_record.operations.proposals import ProposalService
from ehcp_record.operations.reviews import ReviewService
from ehcp_record.operations.sen2 import Sen2Service
from ehcp_record.operations.validate import ValidateOperation
from ehcp_record.operations.worklist import WorklistService
from ehcp_record.plan.documents import DocumentService
from ehcp_record.plan.gate import ParentalInputGate
from ehcp_record.plan.validation import ProfileChecks
from ehcp_record.store.analytics_feed import AnalyticsFeed
from ehcp_record.store.identity import IdentityStore
from ehcp_record.store.media import MediaStore
from ehcp_record.store.repository import Repository
from ehcp_record.store.transfers import TransferStore
from ehcp_record.transfer.receive import ReceiveTransfer
from ehcp_record.transfer.service import TransferService


@dataclass
class Services:
    settings: Settings
    records: RecordStore
    registry: SearchRegistry
    proposals: ProposalService
    audit_log: AuditLog
    documents: DocumentService
    everything: EverythingService
    media: MediaService
    validate: ValidateOperation
    transfers: TransferService
    receive_transfer: ReceiveTransfer
    assessment: AssessmentService = field(default_factory=AssessmentService)
    reviews: ReviewService = field(default_factory=ReviewService)
    notices: NoticeService = field(default_factory=NoticeService)
    worklist: WorklistService = field(default_factory=WorklistService)
    sen2: Sen2Service = field(default_factory=Sen2Service)
    identity: IdentityService | None = None
    analytics: AnalyticsService | None = None
    conformance: ConformanceLibrary = field(default_factory=ConformanceLibrary)
    verifier: Any = None  # api.auth.TokenVerifier, set by the API (Flask-free here)

    @property
    def repo(self) -> Repository:
        """For tests and operators' tools only (the API never reaches past the scoped store)."""
        return self.records.repo


def build_services(settings: Settings) -> Services:
    if not settings.mongodb_uri:
        raise FhirError(500, "exception", "no database: set EHCP_MONGODB_URI or start with `ehcp-record serve`")
    signing_key = load_or_create_private_key(settings.signing_key_path)
    repo = Repository.connect(settings.mongodb_uri, settings.database, signing_key, anchor_log(settings))
    registry = SearchRegistry.load(settings.profiles_dir / "SearchParameter")
    compartment = Compartment.load(settings.profiles_dir / "CompartmentDefinition" / "ehcp-record.json", registry)
    checks = ProfileChecks(ProfileValidator.load(settings.profiles_dir))
    subscriptions = SubscriptionService(registry, allow_plain_http=settings.env != "production")
    records = RecordStore(repo, registry, compartment, validator=checks, gate=ParentalInputGate(),
                          subscriptions=subscriptions, media=MediaStore(repo.db), transfers=TransferStore(repo))
    documents = DocumentService(settings.base_url)
    reviews = ReviewService()
    transfers = TransferService(settings)
    return Services(
        identity=identity_service(repo, records, settings),
        settings=settings, records=records, registry=registry,
        proposals=ProposalService(checks, documents), audit_log=AuditLog(settings.base_url, trusted_keys(settings)),
        documents=documents, everything=EverythingService(), media=MediaService(settings.max_binary_bytes),
        validate=ValidateOperation(checks), transfers=transfers, receive_transfer=ReceiveTransfer(records, transfers),
        assessment=AssessmentService(reviews), reviews=reviews,
        conformance=ConformanceLibrary.load(settings.profiles_dir),
        analytics=analytics_service(repo, settings),
    )


def analytics_service(repo: Repository, settings: Settings) -> AnalyticsService:
    """The de-identified extract (fed read-only from the store, kept in the data dir) and the
    Measures evaluated over it. The feed is handed to the extract here and to nothing else."""
    extract = Extract(settings.data_dir / "analytics" / settings.database, AnalyticsFeed(repo.db),
                      Pseudonymiser.from_data_dir(settings.data_dir / "keys" / "analytics-pseudonym-key"))
    return AnalyticsService(extract, settings.profiles_dir / "Measure", settings.analytics_threshold)


def identity_service(repo: Repository, records: RecordStore, settings: Settings) -> IdentityService:
    """Clients, links and invitations (signing in), stored beside the records."""
    store = IdentityStore(repo.db)
    store.ensure_indexes()
    return IdentityService(store, records, settings)


@contextlib.contextmanager
def client_registry(settings: Settings) -> Iterator[IdentityService]:
    """`ehcp-record clients ...`: the registrations, without the rest of the services."""
    repo = Repository.connect(settings.mongodb_uri or "", settings.database)
    try:
        yield IdentityService(IdentityStore(repo.db), None, settings)
    finally:
        repo.close()


def anchor_log(settings: Settings) -> AnchorLog:
    """Where chain heads are kept outside MongoDB: files in the data dir, one directory per
    database. Replace here to send them to another deployment or a transparency service."""
    return FileAnchorLog(settings.data_dir / "anchor" / settings.database)


def verify_audit_chains(settings: Settings, record: str | None = None) -> tuple[bool, list[str]]:
    """`ehcp-record audit verify`: the operator's check of every chain (or one).
    Raises LookupError for an unknown record."""
    repo = Repository.connect(settings.mongodb_uri or "", settings.database, anchor=anchor_log(settings))
    try:
        return verify_all(repo, settings, record)
    finally:
        repo.close()
