"""Events: typed changes of a workspace, written to the transactional outbox."""
