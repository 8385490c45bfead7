"""POST /v1/captions: router.py (HTTP), protocol.py (its wire schema), service.py (the images read, one chat
request each)."""
