"""HTTP API and dashboard, reading what the stages wrote."""
