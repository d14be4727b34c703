"""`crew serve`: the one process that decides what is resident on an Ollama host.

Every client on the machine (crews, CI jobs, editors, the official `ollama` and `openai`
clients) sends its model requests here instead of to Ollama; each runs inside a hold of one
ResidencyManager (`authority`), so the memory budget, grouping by resident model and the
fairness bound hold across processes. The APIs: the seed router's, in its shapes
(`seed_routes`, `seed_status`), Ollama's (`ollama_routes`), OpenAI's (`openai_routes`), and
operations (`ops`: metrics, events). On SIGTERM it drains (`drain`).

`server` binds and runs it. FastAPI and uvicorn are imported only by `crew serve` and the fleet;
what the fleet takes from here is this package's API below, not its route modules.
"""

from crew.serve.browsers import is_loopback
from crew.serve.server import bind, check_exposure, run_app, serve

__all__ = ["bind", "check_exposure", "is_loopback", "run_app", "serve"]
