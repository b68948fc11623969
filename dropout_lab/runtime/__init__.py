"""How a run executes: training processes, devices, locks, checks before a run, signals, the temporary server."""
