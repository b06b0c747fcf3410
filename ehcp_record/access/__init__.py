"""The access boundary: the caller, the access policy and the caller-scoped store."""
