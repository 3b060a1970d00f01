"""The Fenlo Python SDK: generated stubs in ``fenlo.v1`` and a small async client."""
