"""One module per group of CLI commands: `configure(name, parser)` adds flags, `run_<name>(args)` runs."""
