"""mic2e_services."""
