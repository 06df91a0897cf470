"""`albert-spp`: the command-line client of an albert-spp server (see `albert-spp --help`)."""
