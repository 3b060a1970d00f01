"""Rate limiting behind one interface; the in-process backend is the default."""
