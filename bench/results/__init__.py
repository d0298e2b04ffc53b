"""gradbench's results layer: the declared schema, the parquet store and run metadata, and the
statistical decisions every reader shares."""
