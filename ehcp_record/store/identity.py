"""MongoDB storage for signing in: OAuth clients, identity links, invitations, authorization
codes, refresh tokens, revoked access tokens, used client-assertion ids and the approvals a
person gave third-party apps on the consent screen (pymongo here only).

Nothing here belongs to one child's record, so these collections are keyed by their own ids,
not the record id (they are small and unsharded). Single use is enforced by the database:
a code or an invitation is claimed with one conditional update, so two requests racing with
the same code cannot both win (RFC 6749 §4.1.2, §10.5).

A link keeps the person's name as their identity provider gave it (`display`): sealed at rest
under the deployment's directory key (store/sealing.py), like the directory's own resources.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pymongo import ASCENDING, ReturnDocument
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ehcp_record.store.crypto import DIRECTORY_KEY
from ehcp_record.store.sealing import Sealing


def _now() -> datetime:
    return datetime.now(timezone.utc)


class IdentityStore:
    def __init__(self, db: Database, seal: Sealing | None = None) -> None:
        self.seal = seal or Sealing(None)
        self.clients = db.oauth_clients
        self.links = db.identity_links
        self.invitations = db.invitations
        self.codes = db.oauth_codes
        self.refresh_tokens = db.oauth_refresh_tokens
        self.revoked = db.oauth_revoked_access
        self.assertions = db.oauth_client_assertions
        self.approvals = db.oauth_approvals

    def ensure_indexes(self) -> None:
        self.links.create_index([("identity", ASCENDING), ("active", ASCENDING)])
        self.links.create_index([("record", ASCENDING)])
        for collection in (self.codes, self.revoked, self.assertions, self.invitations, self.refresh_tokens):
            collection.create_index([("expires_at", ASCENDING)], expireAfterSeconds=7 * 24 * 3600)
        self.refresh_tokens.create_index([("from_code", ASCENDING)])

    # --- clients ---------------------------------------------------------------------------

    def put_client(self, document: dict) -> None:
        self.clients.replace_one({"_id": document["client_id"]}, {"_id": document["client_id"], **document},
                                 upsert=True)

    def client(self, client_id: str) -> dict | None:
        return self.clients.find_one({"_id": client_id})

    def all_clients(self) -> list[dict]:
        return list(self.clients.find().sort("_id", ASCENDING))

    def remove_client(self, client_id: str) -> bool:
        return self.clients.delete_one({"_id": client_id}).deleted_count == 1

    # --- links and invitations -------------------------------------------------------------

    def add_invitation(self, document: dict) -> None:
        self.invitations.insert_one(document)

    def claim_invitation(self, code_hash: str, identity: str, at: datetime) -> dict | None:
        """The invitation, now used by `identity`; None if unknown, used or expired."""
        return self.invitations.find_one_and_update(
            {"_id": code_hash, "used_at": None, "expires_at": {"$gt": at}},
            {"$set": {"used_at": at, "used_by": identity}}, return_document=ReturnDocument.AFTER)

    def add_link(self, document: dict) -> None:
        if document.get("display") and self.seal.cipher is not None:
            document = dict(document, display=self.seal.cipher.seal(DIRECTORY_KEY, document["display"]))
        self.links.insert_one(document)

    def _opened(self, document: dict | None) -> dict | None:
        if document is not None and document.get("display"):
            document = dict(document, display=self.seal.open(document["display"], f"link {document.get('_id')}"))
        return document

    def active_links(self, identity: str) -> list[dict]:
        found = self.links.find({"identity": identity, "active": True}).sort("created_at", ASCENDING)
        return [self._opened(d) for d in found]

    def active_link(self, identity: str, fhir_user: str) -> dict | None:
        return self._opened(self.links.find_one({"identity": identity, "fhir_user": fhir_user, "active": True}))

    def link(self, link_id: str) -> dict | None:
        return self._opened(self.links.find_one({"_id": link_id}))

    def links_of_record(self, record: str) -> list[dict]:
        return [self._opened(d) for d in self.links.find({"record": record}).sort("created_at", ASCENDING)]

    def deactivate_link(self, link_id: str, by: str, at: datetime) -> dict | None:
        return self._opened(self.links.find_one_and_update(
            {"_id": link_id, "active": True}, {"$set": {"active": False, "removed_at": at, "removed_by": by}},
            return_document=ReturnDocument.AFTER))

    # --- approvals (the consent screen) ---------------------------------------------------

    def approved_scopes(self, client_id: str, identity: str, link_id: str) -> set[str]:
        document = self.approvals.find_one({"_id": f"{client_id}|{identity}|{link_id}"}, {"scopes": 1})
        return set(document.get("scopes", [])) if document else set()

    def add_approval(self, client_id: str, identity: str, link_id: str, scopes: list[str]) -> None:
        """Remember that this person let this app use these scopes on this link's record."""
        self.approvals.update_one({"_id": f"{client_id}|{identity}|{link_id}"},
                                  {"$addToSet": {"scopes": {"$each": scopes}}, "$set": {"updated_at": _now()},
                                   "$setOnInsert": {"client_id": client_id, "identity": identity, "link": link_id}},
                                  upsert=True)

    def approvals_of(self, identity: str) -> list[dict]:
        return list(self.approvals.find({"identity": identity}).sort("_id", ASCENDING))

    def withdraw_approvals(self, client_id: str, identity: str) -> tuple[bool, list[str]]:
        """Forget this person's approvals of this app and revoke its refresh tokens for them:
        (whether there was any approval, the access-token ids to revoke too)."""
        removed = self.approvals.delete_many({"client_id": client_id, "identity": identity}).deleted_count
        if not removed:
            return False, []
        query = {"client_id": client_id, "identity": identity, "revoked": False}
        tokens = list(self.refresh_tokens.find(query, {"access_jti": 1}))
        self.refresh_tokens.update_many(query, {"$set": {"revoked": True, "revoked_at": _now()}})
        return True, [t["access_jti"] for t in tokens if t.get("access_jti")]

    # --- authorization codes ---------------------------------------------------------------

    def add_code(self, document: dict) -> None:
        self.codes.insert_one(document)

    def claim_code(self, code: str, client_id: str) -> tuple[dict | None, bool]:
        """(the code, now used; or None) and whether it had been used before (a replay)."""
        claimed = self.codes.find_one_and_update(
            {"_id": code, "client_id": client_id, "used": False, "expires_at": {"$gt": _now()}},
            {"$set": {"used": True}}, return_document=ReturnDocument.AFTER)
        if claimed is not None:
            return claimed, False
        replayed = self.codes.find_one({"_id": code, "client_id": client_id, "used": True}, {"_id": 1})
        return None, replayed is not None

    # --- tokens ----------------------------------------------------------------------------

    def add_refresh_token(self, document: dict) -> None:
        self.refresh_tokens.insert_one(document)

    def live_refresh_token(self, token_hash: str) -> dict | None:
        return self.refresh_tokens.find_one({"_id": token_hash, "revoked": False, "expires_at": {"$gt": _now()}})

    def refresh_token(self, token_hash: str) -> dict | None:
        return self.refresh_tokens.find_one({"_id": token_hash})

    def revoke_refresh_token(self, token_hash: str) -> bool:
        """Rotation and revocation: True only for the one request that revoked it."""
        done = self.refresh_tokens.update_one({"_id": token_hash, "revoked": False},
                                              {"$set": {"revoked": True, "revoked_at": _now()}})
        return done.modified_count == 1

    def revoke_tokens_from_code(self, code: str) -> list[str]:
        """RFC 6749 §4.1.2: a code used twice revokes what it gave; the access token ids."""
        tokens = list(self.refresh_tokens.find({"from_code": code}, {"access_jti": 1, "expires_at": 1}))
        self.refresh_tokens.update_many({"from_code": code}, {"$set": {"revoked": True, "revoked_at": _now()}})
        return [t["access_jti"] for t in tokens if t.get("access_jti")]

    def revoke_access(self, jti: str, expires_at: datetime) -> None:
        self.revoked.update_one({"_id": jti}, {"$setOnInsert": {"expires_at": expires_at}}, upsert=True)

    def access_revoked(self, jti: str) -> bool:
        return self.revoked.find_one({"_id": jti}, {"_id": 1}) is not None

    def use_assertion_id(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        """SMART Backend Services: a client assertion's `jti` is accepted once; False on replay."""
        try:
            self.assertions.insert_one({"_id": f"{client_id}|{jti}", "expires_at": expires_at})
        except DuplicateKeyError:
            return False
        return True
