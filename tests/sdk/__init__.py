"""Tests of the Python SDK that need no server."""
