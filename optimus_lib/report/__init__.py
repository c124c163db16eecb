"""Self-contained HTML reports (dataset text is escaped: it is hostile)."""
