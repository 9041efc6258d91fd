"""The fleet runner: the worker pool over the selected hosts, and Ctrl-C and SIGTERM handling."""
