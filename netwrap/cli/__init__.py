"""The command line: options, subcommands (backends, doctor), the summary."""
