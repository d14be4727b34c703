"""Starting a fleet: Ray up, one replica per host deployed, the front served until a signal."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from crew.errors import SettingsError
from crew.fleet.hosts import check_hosts
from crew.settings import HostSettings, Settings

APP = "crew-fleet"
# Replicas report their state this often; the router counts what it sent in between itself.
STATS_PERIOD_S = 0.25
# Requests wait in each host's residency queue, not in Ray's: a replica takes them all.
MAX_ONGOING = 10_000
INSTALL_HINT = "pip install 'crew[ray]'"
# How long a Ray address may take to accept a connection before it counts as nothing there.
ADDRESS_TIMEOUT_S = 5.0


def require_ray() -> None:
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise SettingsError(
            f"crew serve --ray needs Ray Serve, which is not installed: {INSTALL_HINT}") from None


def deployment(settings: Settings, hosts: list[HostSettings]) -> Any:
    """The hosts' deployment, bound: one replica per host, routed by crew's policy."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from crew.fleet.replica import HostReplica

    routing: dict[str, Any] = {"request_router_class": "crew.fleet.router:ResidencyRouter",
                               "request_routing_stats_period_s": STATS_PERIOD_S}
    hosts_deployment = serve.deployment(
        name="hosts", num_replicas=len(hosts), max_ongoing_requests=MAX_ONGOING,
        ray_actor_options={"num_cpus": 0}, request_router_config=RequestRouterConfig(**routing),
        graceful_shutdown_timeout_s=settings.serve_grace_s,
    )(HostReplica)
    return hosts_deployment.bind(settings, hosts)


def serve_fleet(
    settings: Settings, address: str | None, on_ready: Callable[[str], None] | None = None
) -> None:
    """Start (or join) Ray, deploy the hosts, serve the front until SIGTERM or Ctrl-C; then
    delete the deployment, so every host hands its models back."""
    from crew.serve import bind, check_exposure, run_app

    hosts = check_hosts(settings)
    check_exposure(settings)
    require_ray()
    import ray
    from ray import serve

    from crew.fleet.front import Fleet, create_front

    sock = bind(settings.serve_host, settings.serve_port)
    try:
        _check_address(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, SettingsError) as exc:
        sock.close()
        raise SettingsError(f"no Ray cluster at {address} ({exc}): start one with `ray start --head`, "
                            "or leave out --ray-address to run Ray on this machine") from None
    # Serve's own lines (deploying, replicas up) are for `ray logs`, not for this terminal.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        serve.start(proxy_location="Disabled")
        handle = serve.run(deployment(settings, hosts), name=APP, route_prefix=None)
        front = create_front(settings, Fleet(handle, [h.label for h in hosts]))
        run_app(front, settings, sock, on_ready, "is Ray healthy? `ray status` says")
    finally:
        try:
            serve.delete(APP)
        finally:
            ray.shutdown()


def _check_address(address: str | None) -> None:
    """Fail fast on an address where nothing listens: Ray would wait minutes for it."""
    if address is None or address == "auto":
        return  # Ray finds (or fails to find) the local cluster at once
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S).close()
    except ValueError:
        raise SettingsError("the address is not HOST:PORT") from None
    except OSError as exc:
        raise SettingsError(str(exc)) from None
