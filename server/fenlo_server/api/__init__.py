"""gRPC servicers: one per proto service; thin: check, call the domain, map to proto."""
