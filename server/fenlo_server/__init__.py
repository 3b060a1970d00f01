"""The Fenlo server."""
