"""gradbench's application layer: planning, measuring, executors, table, report, check, CLI."""
