"""FHIR structures: models, dates, identifiers, search parameters, the generic profile validator."""
