"""gRPC server interceptors, outermost first: observability, errors, auth, rate limit."""
