"""Where samples come from and where results go: sources, sinks and the registry that opens them by URI."""
