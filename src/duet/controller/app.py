"""The FastAPI application of a controller and the way to serve it."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

if TYPE_CHECKING:
    import uvicorn

    from duet.controller.limits import Guard, LimitedHttpProtocol, Slot

from duet import __version__
from duet.controller.api import FAST_ROUTES, install_error_handlers, router
from duet.controller.ledger_api import router as ledger_router
from duet.controller.runtime import Controller, open_controller
from duet.controller.settings import Settings
from duet.dashboard import router as dashboard_router

log = logging.getLogger("duet.controller")


def create_app(settings: Settings) -> FastAPI:
    return build_app(open_controller(settings))


def build_app(controller: Controller) -> FastAPI:
    """The application around an opened controller (tests pass one made with fakes)."""
    settings = controller.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await controller.service.recover()
        if controller.proposals is not None:
            controller.proposals.recover()  # an execution the stop interrupted never runs; due expiries recorded
            controller.proposals.start_sweeping()
        if controller.checkpoints is not None:
            log.info(
                "checkpoints at /v1/ledger/checkpoint; witnesses trust them with the vkey %s", controller.checkpoints.signer.vkey
            )
        if controller.witnessing is not None:
            controller.witnessing.start()
        if controller.publisher is not None:
            await controller.publisher.start()  # refuses a store that holds another log: the controller does not start
            log.info("publishing the ledger as tiles: %s", controller.publisher.status().line())
        log.info(
            "controller %s ready: providers %s, TEE %s, %d ledger entries",
            controller.identity.controller_id,
            ", ".join(settings.providers),
            controller.tee.name,
            controller.ledger.size,
        )
        try:
            yield
        finally:
            await controller.close()

    app = FastAPI(
        title="duet controller",
        version=__version__,
        description="Signed protocol v1 of the duet controller for confidential VMs. Every answer is signed.",
        lifespan=lifespan,
    )
    app.state.controller = controller
    app.router.routes[:0] = FAST_ROUTES
    app.include_router(router)
    app.include_router(ledger_router)
    app.include_router(dashboard_router)  # the auditor dashboard at / (docs/dashboard.md)
    install_error_handlers(app)
    if settings.seed_api and settings.seed_listen is None:
        from duet.controller.seed_api import install_seed_api  # RSA key and routes only when asked for

        install_seed_api(app, controller)
    return app


def create_seed_app(controller: Controller) -> FastAPI:
    """The seed's protocol alone, for its own plain-HTTP listener; the controller (store,
    ledger, lifecycle) is the one of the main app, so there is still one set of CVMs."""
    from duet.controller.seed_api import install_seed_api

    app = FastAPI(title="duet controller — the seed's protocol", version=__version__, docs_url=None, redoc_url=None)
    app.state.controller = controller
    install_error_handlers(app)
    install_seed_api(app, controller)
    return app


def serve(settings: Settings) -> None:
    """Serve HTTPS with the sealed TLS key (HTTP only with ``tls=False``, said loudly)."""
    import uvicorn

    if settings.tee == "none":
        log.warning("TEE: none — this controller is NOT attested; clients cannot verify what code runs here")
    app = create_app(settings)
    controller = controller_of(app)
    if settings.maa_url:
        from duet.controller.runtime import check_own_evidence

        check_own_evidence(controller, settings.maa_url)
    ssl: dict[str, str] = {}
    if settings.tls and controller.tls is not None:
        ssl = {"ssl_keyfile": str(controller.tls.key_path), "ssl_certfile": str(controller.tls.cert_path)}
        log.info("serving HTTPS; TLS certificate sha256 %s (named in the attested identity)", controller.tls.cert_sha256)
    else:
        log.warning(
            "NO TLS (--no-tls): serving plain HTTP, for development only; clients reach this controller only with --insecure"
        )
    from duet.controller.limits import Guard, Limits, fit_to_file_limit

    main = uvicorn.Config(app, host=settings.host, port=settings.port, **_uvicorn_options(settings), **ssl)  # type: ignore[arg-type]
    guard = Guard(fit_to_file_limit(Limits.of(settings)))  # one budget for every listener
    if settings.seed_listen is None:
        _server(main, controller, guard).run()
        return
    seed_host, seed_port = settings.seed_listen
    log.warning("the seed's protocol is served on http://%s:%d (plain HTTP, no replay protection)", seed_host, seed_port)
    seed = uvicorn.Config(
        create_seed_app(controller), host=seed_host, port=seed_port, **_uvicorn_options(settings), lifespan="off"
    )
    with asyncio.Runner(loop_factory=main.get_loop_factory()) as runner:  # uvloop, as uvicorn.run would
        runner.run(_serve_both(_server(main, controller, guard), _server(seed, None, guard)))


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "log_level": "info",
        "access_log": False,
        "ws": "none",  # no upgrades: every request goes through LimitedHttpProtocol's limits
        "timeout_keep_alive": settings.keep_alive_timeout_s,
    }


async def _serve_both(main: uvicorn.Server, seed: uvicorn.Server) -> None:
    """Both listeners in one event loop. The main server starts last, so its signal handlers
    are the ones in force: a SIGTERM ends it (and its lifespan), and then the seed listener."""
    seed_task = asyncio.create_task(seed.serve())
    try:
        await main.serve()
    finally:
        seed.should_exit = True
        await seed_task


def _server(config: uvicorn.Config, controller: Controller | None, guard: Guard) -> uvicorn.Server:
    """A uvicorn server that accepts its connections under the controller's limits
    (``duet.controller.limits``) and ends the controller's event streams as soon as it is asked
    to stop, so its graceful shutdown is not held up by responses that never end by themselves."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from duet.controller.limits import LimitedHttpProtocol, Listener, bind

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if controller is not None:
                controller.streams.end_all()
            super().handle_exit(sig, frame)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn's startup, but with our own accept loop in place of loop.create_server.
            await self.lifespan.startup()
            if self.lifespan.should_exit:
                sys.exit(STARTUP_FAILURE)
            state = self.lifespan.state

            def protocol(slot: Slot) -> LimitedHttpProtocol:
                return LimitedHttpProtocol(config, self.server_state, state, limits=guard.limits, slot=slot)

            try:
                sock = bind(config.host, config.port, config.backlog)
            except OSError as exc:
                log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
                await self.lifespan.shutdown()
                sys.exit(STARTUP_FAILURE)
            self.servers = [Listener(sock, guard, protocol, config.ssl)]  # type: ignore[list-item]  # close(), wait_closed()
            self._log_started_message([sock])
            self.started = True

    return Server(config)


def controller_of(app: FastAPI) -> Controller:
    return app.state.controller  # type: ignore[no-any-return]
