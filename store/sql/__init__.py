"""What the SQL backends share: rows as records, and the read queries written in the SQL both
SQLite and PostgreSQL speak."""
