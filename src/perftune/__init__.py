"""perftune: take an LLM from a bare model id to its best, proven serving configuration."""

__version__ = "0.1.0"
