"""The service's web side: the REST API (``/api/v1`` and the compatible routes), the dashboard,
tokens and permissions. It reads the database and asks the controller to start and stop
sessions; it never processes anything itself."""
