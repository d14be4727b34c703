"""`crew serve --ray`: `crew serve` over several Ollama hosts, on Ray Serve.

One replica per host (`replica`) owns that host's Authority, the one `crew serve` uses; crew's
residency policy (`policy`) is Ray Serve's request router (`router`) for them; the front
(`front`) answers clients with `crew serve`'s API and sends each request through a deployment
handle; `launch` starts it all, `hosts` gives each host its settings. Ray is an extra
(`pip install 'crew[ray]'`), imported only in this package, and only when a fleet starts.
"""

from crew.fleet.launch import deployment, serve_fleet

__all__ = ["deployment", "serve_fleet"]
