//! Pulling changes back from targets (two-way sync): delta reads per
//! container, handed page by page to the extension. Empty until two-way sync
//! lands; kept here so the data flow reads source → ingest → export / pull.
