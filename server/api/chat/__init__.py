"""POST /v1/chat/completions: router.py (HTTP), protocol.py (OpenAI's wire schema), service.py (the work)."""
