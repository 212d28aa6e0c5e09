"""The ground-truth mock server: exact, deadline-driven token timing for testing clients."""
