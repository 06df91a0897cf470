"""Starting and stopping albert-spp's processes: `python -m stack` for development, and the tests."""
