"""The parts of one running worker, and how a new config replaces them.

`Worker` holds the tenant, its sources, the pipeline that answers jobs, the
queue and the HTTP app; `Worker.switch_to` puts a reloaded config in place
(`worker.reload`), sharing metrics and the audit log. `worker.service` builds
one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.audit import AuditLog
from worker.metrics import Metrics
from worker.pipeline import Pipeline
from worker.precedence import engine_settings
from worker.queues import JobQueue
from worker.settings import Settings
from worker.sources import Sources
from worker.tenant import Tenant

if TYPE_CHECKING:
    from worker.http import WorkerApp

__all__ = ["Worker", "make_pipeline"]


@dataclass
class Worker:
    tenant: Tenant
    sources: Sources
    pipeline: Pipeline
    queue: JobQueue | None
    env: Settings
    app: WorkerApp | None = None

    def switch_to(self, tenant: Tenant) -> Pipeline:
        """A pipeline on a new config, sharing metrics and audit; becomes the current one."""
        old = self.pipeline
        self.tenant = tenant
        self.sources = Sources(tenant, old.metrics)
        self.pipeline = make_pipeline(tenant, self.sources, old.metrics, old.audit, self.env)
        if self.app is not None:
            self.app.pipeline = self.pipeline
        return self.pipeline


def make_pipeline(
    tenant: Tenant, sources: Sources, metrics: Metrics, audit: AuditLog | None, env: Settings
) -> Pipeline:
    key = env.audit_key.get_secret_value().encode()
    pipeline = Pipeline(tenant, sources, metrics, audit, audit_key=key)
    tokens = [engine_settings(tenant, env)[1] or "", env.token.get_secret_value()]
    pipeline.redactor.add(tokens)
    pipeline.redactor.install()
    return pipeline
