"""The malformed-message kinds of the hostile suites (tests/hostile/), shared with the unit
and Celery tests."""
