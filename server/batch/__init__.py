"""The Batch API: files, batches, the worker that runs their lines (see docs/ARCHITECTURE.md)."""
