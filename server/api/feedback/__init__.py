"""POST /v1/feedback: router.py (HTTP), protocol.py (its body), service.py (the score stored as a label)."""
