"""Security tests: hostile input, stream and auth abuse, upload bombs, erasure scans."""
