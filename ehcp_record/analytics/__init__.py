"""The de-identified analytics extract and the measures evaluated over it.

- `pseudonym`: keyed pseudonyms (HMAC-SHA256 with the deployment's key), one per recipient;
- `banding`: ages in bands, dates as months, LA numbers, small settings folded into their type;
- `rows`: one child's current resources -> rows of the extract tables (no names, identifiers,
  free text or exact dates);
- `extract`: the Parquet files (pyarrow), rebuilt incrementally from the store's read-only feed;
  internal to the deployment (the Measures read them), exported only as the release;
- `release`: the release handed to a recipient, each ended year cut once and k-anonymous;
- `disclosure`: primary and secondary suppression of small cells;
- `measures`: the Measures in profiles/Measure, evaluated with DuckDB to MeasureReports;
- `service`: who may ask for what, and the audit of every query.
"""
