"""mistral-small-server: an OpenAI-compatible server for Mistral Small 3.1 with an Azure escalation router."""

__version__ = "0.1.0"
