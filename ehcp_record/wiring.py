"""The composition root: the one place that builds the repository, rules and services.

It is the only module outside the store package and the scoped store that sees the raw
repository: it hands the repository to the `RecordStore`, and everything else receives a
caller-scoped store per request (import-linter contracts in the test suite check this).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

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
from ehcp_record.net.outbound import Fence, configured_refusals
from ehcp_record.notifications.subscriptions import SubscriptionService
from ehcp_record.operations.assessment import AssessmentService
from ehcp_record.operations.audit_log import AuditLog
from ehcp_record.operations.erase import ErasureService
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
from ehcp_record.store.crypto import MasterKeys, local_master_keys, new_local_master_key, retire_local_keys
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
    erasure: ErasureService = field(default_factory=ErasureService)
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
    for refusal in configured_refusals(settings):
        logging.getLogger("ehcp_record.net.outbound").warning(refusal)
    repo = Repository.connect(settings.mongodb_uri, settings.database, signing_key, anchor_log(settings),
                              master_keys(settings))
    registry = SearchRegistry.load(settings.profiles_dir / "SearchParameter")
    compartment = Compartment.load(settings.profiles_dir / "CompartmentDefinition" / "ehcp-record.json", registry)
    checks = ProfileChecks(ProfileValidator.load(settings.profiles_dir))
    subscriptions = SubscriptionService(registry, allow_plain_http=settings.env != "production",
                                        fence=Fence.from_settings(settings))
    records = RecordStore(repo, registry, compartment, validator=checks, gate=ParentalInputGate(),
                          subscriptions=subscriptions, media=MediaStore(repo.db, repo.seal), transfers=TransferStore(repo))
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
        erasure=ErasureService(settings.retention_years),
        analytics=analytics_service(repo, settings),
    )


def analytics_service(repo: Repository, settings: Settings) -> AnalyticsService:
    """The de-identified extract (fed read-only from the store, kept in the data dir) and the
    Measures evaluated over it. The feed is handed to the extract here and to nothing else."""
    extract = Extract(settings.data_dir / "analytics" / settings.database, AnalyticsFeed(repo.db, opener=repo.seal.open),
                      Pseudonymiser.from_data_dir(settings.data_dir / "keys" / "analytics-pseudonym-key"))
    return AnalyticsService(extract, settings.profiles_dir / "Measure", settings.analytics_threshold)


def identity_service(repo: Repository, records: RecordStore, settings: Settings) -> IdentityService:
    """Clients, links and invitations (signing in), stored beside the records."""
    store = IdentityStore(repo.db, repo.seal)
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


def master_keys(settings: Settings) -> Callable[[], MasterKeys]:
    """Where the master key comes from (docs/encryption.md): the configured KMS provider, or
    the local key files in the data dir (the embedded default; config refuses it in production).
    A function, so a running server picks up a rotation (`ehcp-record keys rotate`)."""
    if settings.master_key:
        key = dict(settings.master_key)
        provider = key.pop("provider")
        configured = MasterKeys(dict(settings.kms_providers), provider, key or None, "configured")
        return lambda: configured
    directory = settings.master_key_dir
    return lambda: local_master_keys(directory)


def anchor_log(settings: Settings) -> AnchorLog:
    """Where chain heads are kept outside MongoDB: files in the data dir, one directory per
    database. Replace here to send them to another deployment or a transparency service."""
    return FileAnchorLog(settings.data_dir / "anchor" / settings.database)


def verify_audit_chains(settings: Settings, record: str | None = None) -> tuple[bool, list[str]]:
    """`ehcp-record audit verify`: the operator's check of every chain (or one).
    Raises LookupError for an unknown record."""
    repo = Repository.connect(settings.mongodb_uri or "", settings.database, anchor=anchor_log(settings),
                              master_keys=master_keys(settings))
    try:
        return verify_all(repo, settings, record)
    finally:
        repo.close()


def rotate_master_key(settings: Settings, new_master_key: dict | None = None) -> list[str]:
    """`ehcp-record keys rotate`: re-wrap every data key under a new master key, while servers
    run (`rewrap_many_data_key`; the data keys, so every ciphertext, stay as they are).

    Local key files (the embedded default): a new key file is written, every data key is
    re-wrapped under it (twice over, to catch keys a server created meanwhile under the old
    one), and old files no data key uses any more are deleted. A running server notices the
    new file the first time it needs it (store/crypto.py reloads on an unknown provider).
    With a KMS, `new_master_key` names the new key ({"provider": ..., fields}); put it in
    EHCP_MASTER_KEY afterwards and run the command again once servers have restarted, to
    re-wrap keys created meanwhile."""
    repo = Repository.connect(settings.mongodb_uri or "", settings.database, master_keys=master_keys(settings))
    try:
        assert repo.cipher is not None
        lines = []
        if new_master_key is None and not settings.master_key:
            created = new_local_master_key(settings.master_key_dir)
            target = local_master_keys(settings.master_key_dir)
            target = MasterKeys({target.provider: target.providers[target.provider]}, target.provider)
            lines.append(f"new local master key {created.name}")
        else:
            key = dict(new_master_key or settings.master_key or {})
            provider = key.pop("provider")
            target = MasterKeys(dict(settings.kms_providers), provider, key or None)
        for attempt in (1, 2):
            lines.append(f"pass {attempt}: re-wrapped {repo.cipher.rewrap(target)} data keys under {target.provider}")
        if target.provider.startswith("local:"):
            retired = retire_local_keys(settings.master_key_dir, repo.cipher.providers_in_use() | {target.provider})
            lines.append(f"retired {', '.join(retired) or 'no'} old key files")
        return lines
    finally:
        repo.close()
