"""Who someone is, and what that makes them here: OAuth clients, identities linked to records,
invitations. Flask-free and storage-free (storage is ehcp_record/store/identity.py); the
authorization server that uses these lives in api/oauth*.py.
"""
