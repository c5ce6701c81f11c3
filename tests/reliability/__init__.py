"""Reliability and security tests (issue 6): hostile input, crashes, untrusted files, concurrency, fuzzing."""
