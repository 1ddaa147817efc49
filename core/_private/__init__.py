"""servekit internals. Nothing here is public API; import from ``servekit.core``."""
