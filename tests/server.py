"""`amfrec serve` as a real process on a free loopback port, for the load and browser tests (the package's
own starter, `amfrec.bench.serve.running_server`)."""

from __future__ import annotations

from amfrec.bench.serve import free_port, running_server

__all__ = ["free_port", "running_server"]
