"""The PostgreSQL store: shared by several collectors and dashboards."""
