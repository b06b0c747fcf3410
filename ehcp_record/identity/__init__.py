"""Who someone is, and what that makes them here: OAuth clients, identities linked to records,
invitations, federation to configured OpenID Connect providers (federation.py), key sets from
a `jwks_uri` (jwks.py). Flask-free and storage-free (storage is ehcp_record/store/identity.py);
every outbound HTTP request goes through remote.py. The authorization server that uses these
lives in api/oauth*.py.
"""
