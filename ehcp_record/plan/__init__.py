"""The plan model: the parental-input gate, golden thread, validation, documents, diff, provenance."""
