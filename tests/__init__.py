"""rcnas test suite (a regular package so that ``tests.*`` imports resolve here, never to an installed package
that ships its own top-level ``tests``)."""
