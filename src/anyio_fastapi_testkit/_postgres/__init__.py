"""The PostgreSQL server: binaries, the system user, clusters, the cache, processes."""
