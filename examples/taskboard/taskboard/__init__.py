"""taskboard: projects, their tasks, and an audit log written by a service."""
