"""``python -m regatta.heroes``: serve the heroes service with uvicorn."""

from regatta.common.http.serve import serve
from regatta.heroes.main import create_app

serve(create_app)
