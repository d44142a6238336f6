"""The ``worker`` command (contract §7): parse, call, print."""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import re
import secrets as pysecrets
import sys
import traceback
from collections.abc import Callable, Coroutine
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from worker import logs
from worker import secrets as worker_secrets
from worker.answers import Outcome
from worker.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    ConfigError,
    ConfigErrors,
    EngineAuthError,
    InputRefused,
    RetriableError,
    SourceAuthError,
    SourceError,
    WorkerError,
    without_password,
)
from worker.precedence import audit_target
from worker.runtime import RunSettings
from worker.settings import Settings, env_name

if TYPE_CHECKING:
    from click.decorators import FC

    from worker.config import Tenant
    from worker.router import Route

__all__ = ["main"]

T = TypeVar("T")

tenant_option = click.option(
    "--tenant", "tenant_id", metavar="T", help="The tenant id (config/tenants/T.yaml)."
)
config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="A tenant config file (YAML or JSON) instead of config/tenants/T.yaml.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; its errors end in `_WorkerGroup` (one message, §7 code)."""
    return asyncio.run(coro)


class _WorkerGroup(click.Group):
    """The one error path: any command's exception becomes ``error: …`` on standard
    error and the exit code of contract §7; the traceback only with ``--debug``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: usage errors exit 2
        except Exception as exc:
            code, message = _explain(exc)
            if ctx.params.get("debug"):
                traceback.print_exc()
            click.secho(f"error: {without_password(message)}", fg="red", err=True)
            ctx.exit(code)


def _explain(exc: BaseException) -> tuple[int, str]:
    """The exit code (§7) and one message, saying what to do next, for an error."""
    if isinstance(exc, ConfigErrors):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, (ConfigError, EngineAuthError, SourceAuthError)):
        return EXIT_CONFIG, str(exc)
    if isinstance(exc, (RetriableError, SourceError)):
        cause = exc.__cause__
        detail = f" ({_driver_text(cause)})" if cause is not None else ""
        detail = detail.replace(f"({type(cause).__name__}: ", "(")  # named already
        return EXIT_UNREACHABLE, f"{exc}{detail}; check that it runs and that its address is right"
    if isinstance(exc, (InputRefused, WorkerError)):
        return EXIT_FAILED, str(exc)
    if type(exc).__module__.startswith("asyncpg"):
        return _explain_postgres(exc)
    if isinstance(exc, OSError):
        return _explain_os(exc)
    return EXIT_FAILED, (
        f"unexpected {type(exc).__name__}: {exc}; run again with --debug (or WORKER_DEBUG=1) "
        "for the traceback, and report it"
    )


def _driver_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _explain_postgres(exc: BaseException) -> tuple[int, str]:
    name = type(exc).__name__
    first = (str(exc).strip().splitlines() or [name])[0]
    if name == "InvalidCatalogNameError":
        return EXIT_UNREACHABLE, (
            f"PostgreSQL: {first}; create it (createdb) or fix the database name in the DSN"
        )
    if name in {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        return EXIT_CONFIG, f"PostgreSQL refused the login: {first}; fix the DSN's user or password"
    return EXIT_UNREACHABLE, f"PostgreSQL: {first} ({name}); check the server and the DSN"


_BIND = re.compile(r"address \('?([^',]*)'?, (\d+)")


def _explain_os(exc: OSError) -> tuple[int, str]:
    bind = _BIND.search(str(exc))
    where = f"{bind.group(1)}:{bind.group(2)}" if bind else "that address"
    if exc.errno == errno.EADDRINUSE:
        return EXIT_CONFIG, (
            f"cannot listen on {where}: the address is already in use; stop what listens "
            "there, or choose another address (--listen, or WORKER_HTTP / ENGINE_LISTEN)"
        )
    if bind and exc.errno in {errno.EACCES, errno.EADDRNOTAVAIL}:
        return EXIT_CONFIG, (
            f"cannot listen on {where}: {exc.strerror}; choose another address (--listen)"
        )
    if isinstance(exc, (ConnectionError, TimeoutError)) or exc.errno in {
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    }:
        return EXIT_UNREACHABLE, f"could not connect: {exc}; check that the server runs"
    named = f": {exc.filename}" if exc.filename else ""
    if isinstance(exc, PermissionError):
        return EXIT_CONFIG, f"permission denied{named}; give the worker's user access to it"
    return EXIT_FAILED, f"{exc.strerror or exc}{named}"


async def _tenant(tenant_id: str | None, config_path: Path | None) -> Tenant:
    from worker.service import load

    return await load(tenant_id, config_path, env=_settings())


def _settings() -> Settings:
    """The settings the CLI loaded at start (`cli`), handed to what it runs."""
    found = click.get_current_context(silent=True)
    settings = found.find_object(Settings) if found else None
    return settings or Settings.load()


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _EnvOption(click.Option):
    """An option that may come from an environment variable: a bad value names the
    variable when it came from there, and the option when it was typed."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        source = ctx.get_parameter_source(self.name) if ctx and self.name else None
        if source is click.core.ParameterSource.ENVIRONMENT and isinstance(self.envvar, str):
            return f"{self.envvar} (the environment, for {self.opts[0]})"
        return click.Parameter.get_error_hint(self, ctx)


def _env_option(*decls: str, setting: str, **attrs: Any) -> Callable[[FC], FC]:
    """A ``click.option`` that the setting's environment variable also sets (`_EnvOption`),
    the variable shown in ``--help``."""
    return click.option(*decls, cls=_EnvOption, envvar=env_name(setting), show_envvar=True, **attrs)


def _version() -> str:
    try:
        return metadata.version("data-lookup-worker")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _listen_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``HOST:PORT`` (``:PORT`` for every interface), or '' for none."""
    if value and not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):\d{1,5}", value.strip()):
        raise click.BadParameter(f"{value!r} is not HOST:PORT (127.0.0.1:8080, :8080), or ''")
    if value and int(value.rpartition(":")[2]) > 65535:
        raise click.BadParameter(f"{value!r}: a port is at most 65535")
    return value.strip()


@click.group(cls=_WorkerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="worker", message="%(prog)s %(version)s")
@_env_option(
    "--log-level",
    setting="log_level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="How much to log.",
)
@click.option(
    "--log-json/--log-text",
    default=None,
    help="Log format; by default JSON unless stderr is a terminal.",
)
@_env_option(
    "--debug",
    setting="debug",
    is_flag=True,
    help="Show the traceback of an error, not only its message.",
)
def cli(log_level: str, log_json: bool | None, debug: bool) -> None:
    """Data-lookup worker: answers customers' questions from a tenant's live systems.

    One process serves one tenant: it claims data_lookup jobs from the engine
    (or a queue database), runs the tenant's named, parameterised read on a
    data source, and sends the reply rendered from a template.

    Start with `worker demo`, then `worker lookup --tenant demo order_status order_id=12345`.
    """
    ctx = click.get_current_context()
    if (
        ctx.get_parameter_source("log_level") is ParameterSource.DEFAULT
        and ctx.invoked_subcommand not in _SERVING
    ):
        log_level = "WARNING"  # a one-shot command's own output is what a person reads
    from connectors.network import use_pgsslmode

    settings = Settings.load()
    ctx.obj = settings  # built once here, handed down (`_settings`)
    use_pgsslmode(settings.pgsslmode)
    logs.setup(log_level.upper(), json_lines=log_json, libraries=settings.log_libraries or None)


#: the commands that serve until stopped: their default log level is INFO, the others'
#: WARNING (``--log-level`` / ``WORKER_LOG_LEVEL`` set it for any)
_SERVING = frozenset({"run", "engine", "demo"})


@cli.command()
@tenant_option
@config_option
@click.option("--once", is_flag=True, help="Answer what is queued, then exit.")
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, 10_000),
    default=RunSettings.max_in_flight,
    show_default=True,
    help="Jobs worked on at the same time (fewer while the sources are slow: admission).",
)
@_env_option(
    "--grace",
    "grace_s",
    setting="grace_s",
    type=click.FloatRange(0, 3600),
    default=20.0,
    show_default=True,
    help="Seconds in-flight jobs get to finish on SIGTERM.",
)
@_env_option(
    "--listen",
    setting="http",
    default="127.0.0.1:8080",
    show_default=True,
    callback=_listen_address,
    help="Where /healthz, /readyz, /status, /metrics and the webhooks listen; '' for none.",
)
@_env_option(
    "--processes",
    setting="processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Whole workers side by side, sharing the HTTP port (SO_REUSEPORT) and the queue.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Reload the config file when it or a template changes (or WORKER_CONFIG_WATCH=1).",
)
def run(
    tenant_id: str | None,
    config_path: Path | None,
    once: bool,
    max_in_flight: int,
    grace_s: float,
    listen: str,
    processes: int,
    watch: bool,
) -> None:
    """Serve one tenant's jobs until SIGTERM (or, with --once, until the queue is empty)."""
    if processes > 1:
        run_args = ["--max-in-flight", str(max_in_flight), "--grace", str(grace_s)]
        run_args += ["--listen", listen, *(["--once"] if once else []), *(["--watch"] * watch)]
        run_args += ["--tenant", tenant_id] if tenant_id else []
        run_args += ["--config", str(config_path)] if config_path else []
        raise SystemExit(_run_processes(processes, run_args, once=once))
    from worker.gc_tuning import tune_gc
    from worker.service import serve

    env = _settings()

    async def main() -> int:
        tenant = await _tenant(tenant_id, config_path)
        settings = RunSettings(max_in_flight=max_in_flight, grace_s=grace_s, once=once)
        tune_gc(env)
        return await serve(tenant, settings, listen=listen or None, watch_files=watch, env=env)

    raise SystemExit(_run(main()))


def _run_processes(count: int, run_args: list[str], *, once: bool) -> int:
    """``count`` children, each ``worker run <run_args>`` in one process (worker.processes)."""
    from worker.processes import run_processes

    root = click.get_current_context().find_root().params
    args = ["--log-level", root["log_level"]]
    if root["log_json"] is not None:
        args.append("--log-json" if root["log_json"] else "--log-text")
    argv = [*args, "run", *run_args]
    return asyncio.run(run_processes(count, argv, once=once, settings=_settings()))


def _parse_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="PARAMS")
        values[key] = value
    return values


@cli.command()
@tenant_option
@config_option
@click.argument("lookup_name", metavar="LOOKUP")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@json_option
def lookup(
    tenant_id: str | None,
    config_path: Path | None,
    lookup_name: str,
    pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Run one lookup now, without a queue, and show what the customer would get."""
    from worker.pipeline import UnknownLookup
    from worker.service import open_worker

    values = _parse_pairs(pairs)

    async def main() -> dict[str, Any]:
        tenant = await _tenant(tenant_id, config_path)
        async with open_worker(tenant, with_queue=False, env=_settings()) as worker:
            try:
                answer = await worker.pipeline.lookup(lookup_name, values)
            except UnknownLookup as exc:
                known = ", ".join(sorted(tenant.lookups)) or "none"
                raise click.UsageError(f"{exc}; this tenant's lookups: {known}") from None
            return answer.as_json()

    result = _run(main())
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, default=str))
    else:
        _print_lookup(result)
    if result["outcome"] != "ok":
        raise SystemExit(EXIT_FAILED)  # §7: an outcome other than ok


def _print_lookup(result: dict[str, Any]) -> None:
    colour = {"ok": "green", "not_found": "yellow"}.get(result["outcome"], "red")
    click.echo(f"outcome:  {click.style(result['outcome'], fg=colour, bold=True)}")
    click.echo(f"source:   {result['source']}")
    click.echo(f"time:     {result['response_time_ms']} ms")
    if result["data"] is not None:
        click.echo(
            "data:     " + json.dumps(result["data"], ensure_ascii=False, default=str)[:2000]
        )
    click.echo("reply:")
    for line in (result["message"] or "(none)").splitlines():
        click.echo(f"  {line}")


@cli.command()
@tenant_option
@config_option
@click.argument("text")
@click.option("--from", "sender", metavar="PHONE", help="The customer's number (customer_phone).")
@json_option
@click.option("--explain", is_flag=True, help="Also show the normalised text and each score.")
def route(
    tenant_id: str | None,
    config_path: Path | None,
    text: str,
    sender: str | None,
    as_json: bool,
    explain: bool,
) -> None:
    """Which lookup a customer's TEXT goes to, with which parameters (exit 1: none)."""
    from worker.router import route_text

    tenant = _run(_tenant(tenant_id, config_path))
    found = route_text(tenant, text, sender=sender)
    if as_json:
        body: dict[str, Any] = {"query_type": found.query_type, "parameters": found.parameters}
        if found.missing:
            body["missing"] = list(found.missing)
        if found.ambiguous:
            body["ambiguous"] = list(found.ambiguous)
        if explain:
            body["reasons"] = list(found.reasons)
        click.echo(json.dumps(body, ensure_ascii=False))
    else:
        for reason in found.reasons if explain else ():
            click.echo(f"  {reason}")
        _print_route(found, text)
    if not found.routed:
        raise SystemExit(1)


def _print_route(found: Route, text: str) -> None:
    if found.ambiguous:
        click.secho(
            f"ambiguous: {', '.join(found.ambiguous)} match equally; nothing routed", fg="yellow"
        )
        return
    if not found.routed:
        click.secho(f"no lookup matches: {text!r}", fg="yellow")
        return
    click.echo(f"lookup:     {click.style(found.query_type, fg='green', bold=True)}")
    pairs = " ".join(f"{k}={v}" for k, v in found.parameters.items())
    click.echo(f"parameters: {pairs or '(none)'}")
    if found.missing:
        click.secho(
            f"missing:    {', '.join(found.missing)} (the customer gets the lookup's "
            "invalid_input text asking for it)",
            fg="yellow",
        )


@cli.command()
@json_option
def connectors(as_json: bool) -> None:
    """List the source types this worker can use, with their connection fields."""
    from connectors.registry import available
    from worker.secret_fields import secret_fields

    rows: list[dict[str, Any]] = []
    for info in available():
        fields: dict[str, dict[str, bool]] = {}
        if info.cls is not None:
            secrets = secret_fields(info.cls.Settings)
            for name, field in info.cls.Settings.model_fields.items():
                secret = name in secrets
                fields[name] = {"required": field.is_required(), "secret": secret}
        rows.append(
            {
                "type": info.type_name,
                "installed": info.cls is not None,
                "origin": info.origin,
                "connection": fields,
                "query": info.cls.query_shape if info.cls else None,
                "problem": info.problem,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = click.style("✓", fg="green") if row["installed"] else click.style("·", fg="yellow")
        click.echo(f"{mark} {click.style(row['type'], bold=True)}")
        if row["installed"]:
            names = ", ".join(
                f"{n}{'' if f['required'] else '?'}{' (secret)' if f['secret'] else ''}"
                for n, f in row["connection"].items()
            )
            click.echo(f"    connection: {names}")
            click.echo(f"    query:      {row['query']}")
        else:
            click.echo(f"    {row['problem']}")


@cli.command("test-connection")
@tenant_option
@config_option
@click.option("--source", "source_id", metavar="ID", help="Check only this source.")
def test_connection(tenant_id: str | None, config_path: Path | None, source_id: str | None) -> None:
    """Check that every (or one) data source answers its health check."""
    from worker.sources import Sources

    async def main() -> int:
        tenant = await _tenant(tenant_id, config_path)
        ids = [source_id] if source_id else list(tenant.sources)
        unknown = [i for i in ids if i not in tenant.sources]
        if unknown:
            raise ConfigError(
                f"no data source {unknown[0]!r}; this tenant has: {', '.join(tenant.sources)}"
            )
        sources = Sources(tenant)
        failed = unreachable = 0
        try:
            for sid in ids:
                report = await sources.check(sid)
                unreachable += report.unreachable
                if report.ok:
                    click.echo(
                        f"{click.style('ok  ', fg='green')} {sid:<24} {report.response_time_ms} ms"
                    )
                else:
                    failed += 1
                    click.echo(f"{click.style('FAIL', fg='red')} {sid:<24} {report.error}")
                for warning in report.warnings:  # the check still passes
                    click.echo(f"{click.style('warning:', fg='yellow')} {sid}: {warning}")
        finally:
            await sources.close()
        # contract §7: 4 when a source could not be reached at all, 1 when one answered wrong
        return EXIT_UNREACHABLE if unreachable else EXIT_FAILED if failed else 0

    raise SystemExit(_run(main()))


@cli.group("config")
def config_group() -> None:
    """Check tenant configs."""


@config_group.command("check")
@tenant_option
@config_option
@click.option(
    "--online",
    is_flag=True,
    help="Also connect to each source, prepare each SQL query (without running it) "
    "and check each template's fields against the columns it returns.",
)
def config_check(tenant_id: str | None, config_path: Path | None, online: bool) -> None:
    """Validate a tenant config: shape, sources, queries, lookups and templates."""

    async def main() -> int:
        tenant = await _tenant(tenant_id, config_path)
        where = tenant.path or "the engine's config"
        for warning in tenant.warnings:
            click.secho(f"warning: {warning}", fg="yellow", err=True)
        if tenant.problems:
            for problem in tenant.problems:
                click.secho(f"{where}: {problem}", fg="red", err=True)
            return EXIT_CONFIG
        click.echo(
            f"{where}: ok — {len(tenant.sources)} source(s), {len(tenant.lookups)} lookup(s)"
        )
        return await _check_online(tenant, where) if online else 0

    raise SystemExit(_run(main()))


async def _check_online(tenant: Tenant, where: str | Path) -> int:
    """``config check --online``'s findings (worker.online_check), printed; its exit code."""
    from worker.online_check import Level, check_online

    report = await check_online(tenant)
    colours = {Level.OK: "green", Level.NOTE: "yellow"}
    for finding in report.findings:
        ok = finding.level in colours
        click.secho(f"{where}: {finding}", fg=colours.get(finding.level, "red"), err=not ok)
    return report.exit_code


@config_group.command("schema")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the schema here instead of standard output.",
)
def config_schema(out: Path | None) -> None:
    """Print the tenant config's JSON Schema, for editor completion (see the README)."""
    from worker.config_schema import tenant_schema

    text = json.dumps(tenant_schema(), indent=2, ensure_ascii=False) + "\n"
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(f"cannot write it: {exc.strerror}", param_hint="--out") from None
    click.echo(f"wrote {out}", err=True)


@cli.group("secrets")
def secrets_group() -> None:
    """Encrypt credentials for configs (enc:v1: values) and manage the keys."""


@secrets_group.command("keygen")
def secrets_keygen() -> None:
    """Print a new key for WORKER_SECRET_KEYS."""
    click.echo(worker_secrets.keygen())


@secrets_group.command("encrypt")
@click.option(
    "--tenant",
    "tenant_id",
    metavar="T",
    help="Bind the value to tenant T: it decrypts only in T's config (recommended).",
)
def secrets_encrypt(tenant_id: str | None) -> None:
    """Read a secret on standard input; print its enc:v1: value."""
    if sys.stdin.isatty():
        secret = click.prompt("secret", hide_input=True)
    else:
        secret = sys.stdin.read().rstrip("\r\n")
    if not secret:
        raise click.UsageError("no secret on standard input")
    click.echo(worker_secrets.encrypt(secret, tenant=tenant_id))
    if tenant_id is None:
        click.secho(
            "note: this value decrypts in any tenant's config; `--tenant T` binds it to one tenant",
            err=True,
        )


@secrets_group.command("rotate")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
def secrets_rotate(config_path: Path) -> None:
    """Re-encrypt every enc:v1: value in a config with the first key (keeps PATH.bak).

    Values not yet bound to a tenant come out bound to the config's tenant.
    """
    text = config_path.read_text(encoding="utf-8")
    try:
        rotated, count = worker_secrets.rotate_text(text, tenant=_config_tenant(config_path))
    except ConfigError as exc:
        click.secho(f"error: {exc}; nothing was changed", fg="red", err=True)
        raise SystemExit(EXIT_CONFIG) from None
    backup = config_path.with_name(config_path.name + ".bak")
    backup.write_text(text, encoding="utf-8")
    temporary = config_path.with_name(f".{config_path.name}.rotating")
    temporary.write_text(rotated, encoding="utf-8")
    temporary.replace(config_path)  # atomic on one file system
    click.echo(
        f"{config_path}: {count} secret(s) re-encrypted with the first key; backup in {backup}"
    )


def _config_tenant(config_path: Path) -> str:
    """The tenant a config file is for: its ``tenant_id``, else the file's name."""
    from worker.config import parse_document

    document, _ = parse_document(config_path.read_text(encoding="utf-8"), name=str(config_path))
    named = document.get("tenant_id") if isinstance(document, dict) else None
    return named if isinstance(named, str) and named else config_path.stem


@secrets_group.command("check")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
def secrets_check(config_path: Path) -> None:
    """Check that every enc:v1: value in a config decrypts with WORKER_SECRET_KEYS."""
    from worker.config import parse_document

    document, _ = parse_document(config_path.read_text(encoding="utf-8"), name=str(config_path))
    failed = list(worker_secrets.undecryptable(document, tenant=_config_tenant(config_path)))
    total = len(worker_secrets.TOKEN.findall(config_path.read_text(encoding="utf-8")))
    for where, why in failed:
        click.secho(f"{config_path}: {where}: {why}", fg="red", err=True)
    if failed:
        raise SystemExit(1)
    click.echo(f"{config_path}: {total} secret(s), all decrypt")


@cli.group("queue")
def queue_group() -> None:
    """Create the queue tables."""


def _queue_dsn(value: str, *, param_hint: str = "--dsn") -> str:
    """A queue target `open_store` takes: a PostgreSQL DSN, ``sqlite://…``, or a file path."""
    value = value.strip()
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", value)
    if not value or (
        scheme and scheme.group(1).lower() not in {"postgres", "postgresql", "sqlite"}
    ):
        raise click.BadParameter(
            f"{without_password(value)!r} is not a queue database: give postgresql://… "
            "(or postgres://…), sqlite:///path/to/queue.db, or a file path",
            param_hint=param_hint,
        )
    return value


def _dsn_from(ctx: click.Context, dsn: str | None, dsn_file: Path | None) -> str:
    """``--dsn`` (or ``QUEUE_DSN``), or the first line of ``--dsn-file``: never both."""
    if dsn is not None and dsn_file is not None:
        raise click.UsageError("give --dsn (or QUEUE_DSN) or --dsn-file, not both", ctx=ctx)
    if dsn_file is not None:
        lines = dsn_file.read_text(encoding="utf-8").splitlines()
        return _queue_dsn(lines[0] if lines else "", param_hint="--dsn-file")
    if dsn is None:
        raise click.UsageError("give the queue's database: --dsn, QUEUE_DSN or --dsn-file", ctx=ctx)
    hint = (
        env_name("queue_dsn")
        if ctx.get_parameter_source("dsn") is click.core.ParameterSource.ENVIRONMENT
        else "--dsn"
    )
    return _queue_dsn(dsn, param_hint=hint)


@queue_group.command("init")
@_env_option(
    "--dsn",
    setting="queue_dsn",
    help="postgresql://… or sqlite:///path/to/queue.db (a plain path is a SQLite file).",
)
@click.option(
    "--dsn-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the DSN from this file's first line (keeps its password out of `ps`).",
)
def queue_init(dsn: str | None, dsn_file: Path | None) -> None:
    """Create the jobs and outbound_messages tables (safe to run twice)."""
    from worker.stores import open_store

    target = _dsn_from(click.get_current_context(), dsn, dsn_file)

    async def main() -> None:
        async with open_store(target):
            pass

    _run(main())
    click.echo(f"queue ready at {without_password(target)}")


@cli.group("engine")
def engine_group() -> None:
    """The local engine: the engine's API on a local queue, for development and self-hosting."""


@engine_group.command("serve")
@_env_option(
    "--listen",
    setting="engine_listen",
    default="127.0.0.1:8000",
    show_default=True,
    callback=_listen_address,
    help="Where the engine's API listens (HOST:PORT).",
)
@_env_option(
    "--db",
    setting="engine_db",
    default="engine.db",
    show_default=True,
    help="The queue: a SQLite file or a postgresql:// DSN.",
)
@click.option(
    "--token",
    envvar=env_name("engine_token"),
    help="Bearer token callers must send (ENGINE_TOKEN); a random one is printed if unset.",
)
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("config/tenants"),
    show_default=True,
    help="Tenant configs served on GET /routes/tenants/{id}/data-sources.",
)
@_env_option(
    "--lease-s",
    setting="engine_lease_s",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds a claimed job stays leased without a heartbeat.",
)
def engine_serve(listen: str, db: str, token: str | None, config_dir: Path, lease_s: float) -> None:
    """Serve the engine API (queue, messages, tenant configs) on a SQLite queue."""
    from worker.gc_tuning import tune_gc
    from worker.http import parse_listen
    from worker.local_engine import LocalEngine, serve_engine
    from worker.runtime import stop_on_signals
    from worker.stores import open_store

    if not listen:
        raise click.BadParameter(
            "the engine must listen somewhere: HOST:PORT", param_hint="--listen"
        )
    if not token:
        token = pysecrets.token_urlsafe(24)
        click.echo(f"no ENGINE_TOKEN set; this run's token: {token}", err=True)
    host, port = parse_listen(listen)
    db = _queue_dsn(db, param_hint="--db")

    async def main() -> None:
        stop = asyncio.Event()
        async with open_store(db) as store:
            tune_gc(_settings())
            engine = LocalEngine(store, token=token, config_dir=config_dir, lease_s=lease_s)
            with stop_on_signals(stop):
                await serve_engine(
                    engine,
                    host,
                    port,
                    stop,
                    ready=lambda p: click.echo(
                        f"local engine on http://{host}:{p} (queue: {without_password(db)})",
                        err=True,
                    ),
                )

    _run(main())


@engine_group.command("token")
@click.option("--tenant", "tenant_id", metavar="T", help="Issue a token that acts only for T.")
@click.option(
    "--db",
    default=lambda: Settings.load().engine_db,
    show_default="ENGINE_DB or ./engine.db",
    help="The engine's queue: a SQLite file or a postgresql:// DSN.",
)
@click.option("--list", "list_tokens", is_flag=True, help="List the scoped tokens.")
@click.option(
    "--revoke",
    metavar="ID",
    help="Revoke a token: its id from --list (8+ hex digits), or the token itself.",
)
def engine_token(tenant_id: str | None, db: str, list_tokens: bool, revoke: str | None) -> None:
    """Issue a token scoped to one tenant (printed once; only its SHA-256 is kept), list or revoke.

    With a scoped token, every engine call sees and changes only that tenant's jobs,
    messages and config.
    """
    from worker.local_engine import issue_token, token_digest
    from worker.stores import open_store

    if sum((tenant_id is not None, list_tokens, revoke is not None)) != 1:
        raise click.UsageError("give one of --tenant T, --list or --revoke ID")

    async def main() -> None:
        async with open_store(db) as store:
            if list_tokens:
                for row in await store.tokens():
                    click.echo(f"{row.token_sha256[:12]}  {row.tenant_id}  {row.created_at}")
            elif revoke is not None:
                hex_id = re.fullmatch(r"[0-9a-f]{8,64}", revoke)
                count = await store.revoke_tokens(revoke if hex_id else token_digest(revoke))
                click.echo(f"{count} token(s) revoked", err=True)
                if not count:
                    raise SystemExit(1)
            elif tenant_id is not None:
                try:
                    token = await issue_token(store, tenant_id)
                except ValueError as exc:
                    raise click.BadParameter(str(exc), param_hint="--tenant") from None
                click.echo(token)
                click.echo(
                    f"token {token_digest(token)[:12]} for tenant {tenant_id!r}: shown only once",
                    err=True,
                )

    _run(main())


_UNITS = {
    "s": ("second", 1),
    "m": ("minute", 60),
    "h": ("hour", 3600),
    "d": ("day", 86400),
    "w": ("week", 604800),
}


def _since(value: str) -> tuple[dt.timedelta, str]:
    """``24h`` → (24 hours, "last 24 hours"); also ``90m``, ``7d``, ``2 weeks``."""
    match = re.fullmatch(
        r"(\d{1,6})\s*(s|m|h|d|w|sec|min|hour|day|week|second|minute)s?", value.strip().lower()
    )
    if not match or not int(match.group(1)):
        raise click.BadParameter("use a number and a unit: 30m, 24h, 7d", param_hint="--since")
    count = int(match.group(1))
    word, seconds = _UNITS[match.group(2)[0]]
    readable = f"last {word}" if count == 1 else f"last {count} {word}s"
    return dt.timedelta(seconds=count * seconds), readable


async def _stats_tenant(tenant_id: str | None, config_path: Path | None) -> Tenant:
    """The config as far as `worker stats` needs it: the audit log's place. Its secrets
    are decrypted only when that place is itself encrypted (or read from the environment)."""
    from worker.service import load

    tenant = await load(tenant_id, config_path, decrypt=False, env=_settings())
    if not re.search(r"enc:v1:|\$\{env:", audit_target(tenant)):
        return tenant
    try:
        return await load(tenant_id, config_path, env=_settings())
    except ConfigError as exc:
        raise ConfigError(
            f"the audit log's DSN is encrypted or read from the environment, so stats "
            f"needs the config's secrets: {exc}"
        ) from None


@cli.command()
@tenant_option
@config_option
@click.option("--since", default="24h", show_default=True, help="How far back: 90m, 24h, 7d.")
@click.option(
    "--by",
    type=click.Choice(["hour", "lookup"]),
    help="Only the table per data source and hour, or only the one per lookup "
    "(--json: hour unless --by lookup).",
)
@json_option
def stats(
    tenant_id: str | None, config_path: Path | None, since: str, by: str | None, as_json: bool
) -> None:
    """Lookups per data source per hour (count, average time), and per lookup (outcomes,
    average and p95 time), from the audit log."""
    from worker.audit import hourly_stats, lookup_stats

    window, readable = _since(since)

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        tenant = await _stats_tenant(tenant_id, config_path)
        target, key = audit_target(tenant), tenant.config.tenant_uuid
        hourly = (
            []
            if by == "lookup"
            else await hourly_stats(target, tenant.tenant_id, window, tenant=key)
        )
        lookups = (
            []
            if by == "hour" or (as_json and by is None)
            else await lookup_stats(target, tenant.tenant_id, window, tenant=key)
        )
        return hourly, lookups

    hourly, lookups = _run(main())
    if as_json:
        click.echo(json.dumps(lookups if by == "lookup" else hourly))
        return
    if not hourly and not lookups:
        click.echo(f"no data access in the {readable}")
        return
    if by != "lookup":
        _print_hourly(hourly, readable)
    if by != "hour":
        if by is None:
            click.echo()
        _print_lookups(lookups, readable)


def _print_hourly(rows: list[dict[str, Any]], readable: str) -> None:
    click.echo(f"per data source and hour, {readable}:")
    click.echo(f"{'hour (UTC)':<26} {'data source':<24} {'lookups':>8} {'avg ms':>8}")
    for row in rows:
        avg = row["avg_response_time"] or 0.0
        source = row["data_source_id"] or "-"
        click.echo(f"{row['hour']:<26} {source:<24} {row['query_count']:>8} {avg:>8.1f}")


_OUTCOMES = tuple(Outcome)


def _print_lookups(rows: list[dict[str, Any]], readable: str) -> None:
    click.echo(f"per lookup, {readable}:")
    heads = "".join(f" {o:>{max(len(o), 4)}}" for o in _OUTCOMES)
    click.echo(f"{'lookup':<24} {'lookups':>8}{heads} {'avg ms':>8} {'p95 ms':>8}")
    for row in rows:
        outcomes = row["outcomes"]
        counts = "".join(
            f" {'-' if outcomes is None else outcomes.get(o, 0):>{max(len(o), 4)}}"
            for o in _OUTCOMES
        )
        avg = "-" if row["avg_response_time"] is None else f"{row['avg_response_time']:.1f}"
        p95 = "-" if row["p95_response_time"] is None else str(row["p95_response_time"])
        name = row["query_type"] or "-"
        click.echo(f"{name:<24} {row['query_count']:>8}{counts} {avg:>8} {p95:>8}")
    if rows and rows[0]["outcomes"] is None:
        click.echo("(outcomes: the audit table has no outcome column, as in the seed's shape)")


@cli.command("import-n8n")
@click.argument("workflows", nargs=-1, required=True, metavar="WORKFLOW.json...")
@click.option("--tenant", "tenant_id", required=True, metavar="T", help="The new config's tenant.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the config here instead of standard output.",
)
def import_n8n(workflows: tuple[str, ...], tenant_id: str, out: Path | None) -> None:
    """Turn n8n workflow exports into a tenant config: one lookup per workflow.

    What needs a person (credentials, reply templates, nodes with no equivalent)
    goes to standard error. Exit 1 when something could not be translated, 3 when
    a file is not a workflow export.
    """
    from worker.n8n_import import InvalidWorkflow, import_files

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", tenant_id):
        raise click.BadParameter("letters, digits, _ . - (up to 100)", param_hint="--tenant")
    try:
        result = import_files([Path(w) for w in workflows], tenant_id)
    except InvalidWorkflow as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(3) from None
    for line in result.report():
        click.echo(line, err=True)
    if result.config is not None and out is None:
        click.echo(result.config, nl=False)
    elif result.config is not None and out is not None:
        try:
            out.write_text(result.config, encoding="utf-8")
        except OSError as exc:
            why = f"cannot write it: {exc.strerror}"
            raise click.BadParameter(why, param_hint="--out") from None
        click.echo(f"wrote {out}", err=True)
    raise SystemExit(result.exit_code)


@cli.command()
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the demo's queue database in this folder.",
)
def demo(keep: Path | None) -> None:
    """Run the whole flow locally: engine, demo tenant, sample questions, replies."""
    from worker.demo import run_demo

    raise SystemExit(_run(run_demo(keep)))


def main() -> None:
    cli(prog_name="worker")


if __name__ == "__main__":
    main()
