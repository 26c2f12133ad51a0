"""``python -m regatta.items``: serve the items service with uvicorn."""

from regatta.common.http.serve import serve
from regatta.items.main import create_app

serve(create_app)
