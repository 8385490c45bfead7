"""The Batch API (/v1/batches): router.py (HTTP), service.py (the batch service as the routers get it; /v1/files
uses it too). Its wire shapes and its work are server/batch/."""
