"""The foundation: errors, the Redis client and key names, extension objects, app classes,
request schemas and the background loop. Imported by auth and by every area; imports neither."""
