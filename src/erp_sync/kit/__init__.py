"""Infrastructure helpers. Nothing here imports the rest of erp_sync."""
