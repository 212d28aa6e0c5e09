"""The shared bench client: exact, fast, trustworthy measurement of OpenAI-compatible servers."""
