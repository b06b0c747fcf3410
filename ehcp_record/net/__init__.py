"""The network edge: every request the server makes to another machine (outbound.py)."""
