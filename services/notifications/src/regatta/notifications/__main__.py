"""``python -m regatta.notifications``: serve the notifications service with uvicorn."""

from regatta.common.http.serve import serve
from regatta.notifications.main import create_app

serve(create_app)
