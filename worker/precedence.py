"""Where the worker's engine, queue and audit log are: the environment over the
tenant's config.

The operator's environment (`worker.settings.Settings`) wins over what a config
says, so one image serves any tenant; a config fills in what the environment
leaves unset (the README's "Environment" table names each variable).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from worker.settings import Settings

if TYPE_CHECKING:  # the CLI imports this module before any config is read
    from worker.tenant import Tenant

__all__ = ["audit_target", "engine_settings", "queue_target"]


def engine_settings(
    tenant: Tenant | None = None, settings: Settings | None = None
) -> tuple[str | None, str | None]:
    """Engine URL and token: ``ENGINE_URL`` / ``ENGINE_TOKEN`` over the config's ``engine``."""
    settings = settings or Settings.load()
    engine = tenant.config.engine if tenant else None
    url = settings.engine_url or (engine.url if engine else None)
    token = settings.engine_token.get_secret_value() or (engine.token if engine else None)
    return url, token


def queue_target(tenant: Tenant, settings: Settings | None = None) -> str | None:
    """The queue database: ``QUEUE_DSN``, else the config's ``queue`` block."""
    settings = settings or Settings.load()
    target: str | None = settings.queue_dsn
    queue = tenant.config.queue
    if not target and queue is not None:
        if queue.postgres is not None:
            target = queue.postgres.dsn
        elif queue.sqlite is not None and queue.sqlite.path:
            raw = Path(queue.sqlite.path)
            target = str(raw if raw.is_absolute() else tenant.base_dir / raw)
    return target or None


def audit_target(tenant: Tenant, settings: Settings | None = None) -> str:
    """``AUDIT_DSN``, the config's ``audit.dsn``, the queue's database, or a file: in
    ``WORKER_STATE_DIR`` when set (the image sets it: its config may be mounted
    read-only), else beside the config."""
    settings = settings or Settings.load()
    audit = tenant.config.audit
    explicit = settings.audit_dsn or (audit.dsn if audit else None)
    if explicit:
        return explicit
    queue = queue_target(tenant, settings)
    if queue:
        return queue.removeprefix("sqlite:///").removeprefix("sqlite://")
    state = settings.state_dir.strip()
    folder = Path(state) if state else tenant.path.parent if tenant.path else Path.cwd()
    return str(folder / f"{tenant.tenant_id}.audit.db")
