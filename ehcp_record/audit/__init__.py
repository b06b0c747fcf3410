"""The audit trail: entry bodies, the hash chain, AuditEvent mapping, verification, signing."""
