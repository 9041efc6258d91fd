"""One module per command: ``run(args) -> exit code``; they call jobs and render results."""
