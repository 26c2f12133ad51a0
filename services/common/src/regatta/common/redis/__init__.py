"""What lives in Redis: the response cache and the event stream."""
