"""The test databases: schema into a template, working clones, spares, xdist runs."""
