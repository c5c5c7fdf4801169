"""The kit's settings, errors, warnings, names and real clock: used by every other part."""
