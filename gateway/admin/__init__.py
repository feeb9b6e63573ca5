"""Admin area: the JSON key-management API (``gateway.admin.api``)."""
