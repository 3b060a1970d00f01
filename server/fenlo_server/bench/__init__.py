"""The benchmark harness: Fenlo against a bare grpc.aio baseline, measured in the same run."""
