"""EHCP operations and FHIR interactions beyond CRUD, one module per operation."""
