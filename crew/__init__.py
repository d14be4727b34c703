"""crew: a local-first software team of LLM agents on one machine's memory."""

__version__ = "0.1.0"
