"""Authentication (JWT and API keys), the Principal, and the permission table."""
