"""The Files API (/v1/files) that batches read their input from and write their output to: router.py."""
