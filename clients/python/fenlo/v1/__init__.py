"""Generated from protos/fenlo/v1 by `make generate`. Do not edit."""
