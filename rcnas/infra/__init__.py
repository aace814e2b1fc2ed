"""Infrastructure every layer uses and none is about: registries, user-facing errors, strict config loading, the
entry points' error handling, content keys and code version, device choice."""
