"""The HTTP edge: app factory, middleware, problems, auth, rate limit, health, routing."""
