"""One job, start to finish: payload → lookup → params → source → reply.

Each stage is its own short function. `Pipeline.answer` never lets a source's
trouble escape: a failure, a timeout or a broken template becomes the
``fallback`` outcome within the lookup's deadline. It raises only `NotOurs`
(the job must be failed, not answered) and `UnknownLookup`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

from jinja2 import Template

from connectors.base import Bound, ReadResult
from worker.answers import Answer, Outcome
from worker.audit import AuditLog, AuditRow, mask_identifier
from worker.config import Knowledge, Lookup, Tenant
from worker.errors import InputRefused, InvalidInput, NotOurs, SourceError, SourceFull
from worker.jobs import JobRequest, read_payload, refused_by_source, validate_params
from worker.metrics import Metrics
from worker.redact import Redactor
from worker.render import RenderError
from worker.sources import Sources
from worker.stores.base import JOB_TYPE

# Answer and Outcome live in worker.answers; named here too for the modules that import them
__all__ = ["Answer", "Outcome", "Pipeline", "UnknownLookup"]

log = logging.getLogger(__name__)

#: The reply address of `worker lookup` runs: nobody is messaged, nobody is masked.
CLI_ADDRESS = "cli"


class UnknownLookup(NotOurs):
    """No lookup of that name, no source query of that name, and no tenant fallback."""


class Pipeline:
    """Answers jobs for one tenant."""

    def __init__(
        self,
        tenant: Tenant,
        sources: Sources,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        *,
        audit_key: bytes = b"",
    ) -> None:
        self.tenant = tenant
        self.sources = sources
        self.metrics = metrics or Metrics()
        # the status page's rows: this config's lookups and source queries, from now on
        self.metrics.recent.known = lambda name: (
            name in tenant.lookups or bool(tenant.find_query(name))
        )
        self.audit = audit
        self.redactor = Redactor(tenant.secrets)
        audit_config = tenant.config.audit
        self._identifier = audit_config.identifier if audit_config else "masked"
        self._audit_key = audit_key  # WORKER_AUDIT_KEY, for `identifier: hashed`
        self._tenant_uuid = tenant.config.tenant_uuid

    async def answer(self, payload: Any, *, lookup_name: str | None = None) -> Answer:
        """Answer one job payload; ``lookup_name`` overrides its query_type (push webhook)."""
        started = time.perf_counter()
        begun = asyncio.get_running_loop().time()  # deadlines count from here (wait included)
        try:
            request = read_payload(payload, self.tenant.tenant_id)
        except InvalidInput as exc:
            return self._finish(self._invalid(exc, None, {}), started)
        query_type = lookup_name or request.query_type
        try:
            lookup = self._resolve(query_type, request)
        except InvalidInput as exc:
            return self._finish(self._invalid(exc, None, request), started)
        if lookup is None:
            return self._finish(self._unknown(query_type, request), started)
        answer = await self._run(lookup, request, begun + lookup.timeout_s)
        return self._finish(answer, started)

    async def lookup(
        self, name: str, values: Mapping[str, Any], customer: Mapping[str, Any] | None = None
    ) -> Answer:
        """Run one lookup by name, as ``worker lookup`` does, without a queue."""
        payload = {
            "job_type": JOB_TYPE,
            "tenant_id": self.tenant.tenant_id,
            "query_type": name,
            "parameters": dict(values),
            "customer_context": dict(customer or {}),
            "reply_to": (customer or {}).get("phone") or CLI_ADDRESS,
        }
        return await self.answer(payload)

    def _finish(self, answer: Answer, started: float) -> Answer:
        answer.response_time_ms = round((time.perf_counter() - started) * 1000)
        if answer.outcome != Outcome.OK:  # error texts must not carry a credential out
            answer.result = self.redactor.scrub_any(answer.result)
        self.metrics.answered(answer.outcome, answer.lookup)
        self.metrics.recent.record(answer.lookup, answer.outcome, answer.response_time_ms)
        if self.audit is not None:
            answer.audit = self._audit_row(answer)
            self.audit.record(answer.audit)
        return answer

    def release_audit(self, answer: Answer) -> None:
        """``answer`` is settled without a store completing a job (a push webhook): its row
        goes to the audit log's buffer now instead of waiting for a completion to carry it."""
        if self.audit is not None and answer.audit is not None:
            self.audit.settle(answer.audit)

    def _audit_row(self, answer: Answer) -> AuditRow:
        who = (
            CLI_ADDRESS
            if answer.reply_to == CLI_ADDRESS
            else mask_identifier(answer.reply_to, mode=self._identifier, key=self._audit_key)
        )
        return AuditRow(
            tenant_id=self.tenant.tenant_id,
            data_source_id=answer.source_id,
            query_type=answer.lookup,
            customer_identifier=who,
            accessed_at=dt.datetime.now(dt.UTC),
            response_time_ms=answer.response_time_ms,
            outcome=answer.outcome,
            tenant_uuid=self._tenant_uuid,
        )

    def _resolve(self, query_type: str, request: JobRequest) -> Lookup | None:
        """The lookup entry of that name; else the query of that name on the job's
        ``data_source``; else on the one source that has it (contract §5).

        A ``data_source`` that is not a configured source (the seed's jobs name
        ``crm_api``) or lacks the query does not stop the one source that has it;
        several sources with it and none named is `InvalidInput`.
        """
        lookup = self.tenant.lookups.get(query_type)
        if lookup is not None:
            return lookup
        named = request.data_source
        holders = self.tenant.find_query(query_type)
        if named in holders:
            return self.tenant.source_lookup(query_type, str(named))
        if len(holders) > 1:
            raise InvalidInput(
                [
                    f"the question {query_type!r} is set up on several data sources "
                    f"({', '.join(holders)}): say which data source"
                ],
                request.reply_to,
            )
        if not holders:
            return None
        if named:
            why = (
                "has no query of that name"
                if named in self.tenant.sources
                else ("is not a configured source")
            )
            log.info(
                "the job's data_source %r %s: %s runs on %r, the one source that has it",
                named,
                why,
                query_type,
                holders[0],
                extra={"action": "lookup", "source": holders[0]},
            )
        return self.tenant.source_lookup(query_type, holders[0])

    def _unknown(self, query_type: str, request: JobRequest) -> Answer:
        if "fallback" not in self.tenant.config.defaults.model_fields_set:
            raise UnknownLookup(f"no lookup named {query_type!r} and no tenant fallback text")
        context = self._context(None, request, {}, ReadResult(rows=[]))
        message = self._render(self.tenant.defaults["fallback"], context)
        return Answer(
            Outcome.FALLBACK,
            message,
            request.reply_to,
            f"unknown lookup {query_type!r}",
            lookup=query_type,
        )

    async def _run(self, lookup: Lookup, request: JobRequest, deadline: float) -> Answer:
        """``deadline`` is on the event loop's clock: the job's start plus the lookup's timeout."""
        try:
            params = validate_params(lookup, request.parameters, reply_to=request.reply_to)
            if request.reply_to is None:
                raise InvalidInput(["the job has no reply address"], None)
            if len(lookup.args) != lookup.query.positional:
                raise InvalidInput(
                    ["this question is not set up to take its details yet"], request.reply_to
                )
        except InvalidInput as exc:
            return self._invalid(exc, lookup, request)
        bound = Bound(args=tuple(params.get(a) for a in lookup.args), params=params)
        try:
            result = await self._read(lookup, bound, deadline)
        except InputRefused as exc:
            return self._refused(exc, lookup, request)
        except (SourceError, TimeoutError) as exc:
            reason = (
                exc.message
                if isinstance(exc, SourceError)
                else (f"no answer within {lookup.timeout_s:g} s")
            )
            log.warning(
                "lookup %s fell back: %s",
                lookup.name,
                reason,
                extra={"action": "lookup", "source": lookup.source_id},
            )
            known = await self._knowledge(lookup, request, params, reason)
            return known or self._fallback(lookup, request, params, reason)
        return self._reply(lookup, request, params, result)

    async def _read(self, lookup: Lookup, bound: Bound, deadline: float) -> ReadResult:
        started = time.perf_counter()
        try:
            try:
                return await self._read_once(lookup, bound, deadline)
            except SourceFull:  # no new connection: wait for one of those it has, once
                return await self._read_once(lookup, bound, deadline)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.lookup_took(lookup.source_id, elapsed)

    async def _read_once(self, lookup: Lookup, bound: Bound, deadline: float) -> ReadResult:
        # A wait for a free slot on the source counts against the deadline; the
        # server is given what is left of it.
        async with self.sources.reading(lookup.source_id, deadline) as connector:
            return await connector.run(lookup.query, bound, timeout_s=_left(deadline))

    def _reply(
        self, lookup: Lookup, request: JobRequest, params: dict[str, Any], result: ReadResult
    ) -> Answer:
        context = self._context(lookup, request, params, result)
        if not result.found:
            message = self._render(lookup.not_found, context)
            return self._answer(Outcome.NOT_FOUND, message, lookup, request, params, None)
        try:
            message = self.tenant.renderer.render(lookup.template, context)
        except RenderError as exc:
            log.error(
                "template of %s failed: %s",
                lookup.name,
                exc,
                extra={"action": "render", "lookup": lookup.name},
            )
            return self._fallback(lookup, request, params, f"template failed: {exc}")
        return self._answer(Outcome.OK, message, lookup, request, params, result.data)

    @staticmethod
    def _answer(
        outcome: Outcome,
        message: str,
        lookup: Lookup,
        request: JobRequest,
        params: dict[str, Any],
        result: Any,
    ) -> Answer:
        return Answer(
            outcome, message, request.reply_to, result, lookup.name, lookup.source_id, params=params
        )

    def _fallback(
        self, lookup: Lookup, request: JobRequest, params: dict[str, Any], reason: str
    ) -> Answer:
        context = self._context(lookup, request, params, ReadResult(rows=[]))
        message = self._render(lookup.fallback, context)
        return Answer(
            Outcome.FALLBACK,
            message,
            request.reply_to,
            reason,
            lookup.name,
            lookup.source_id,
            params=params,
        )

    async def _knowledge(
        self, lookup: Lookup, request: JobRequest, params: dict[str, Any], reason: str
    ) -> Answer | None:
        """The knowledge base's answer when the source failed; None: use the static text."""
        known = lookup.knowledge
        if known is None:
            return None
        bound = Bound(args=tuple(params.get(a) for a in known.args), params=params)
        try:
            result = await self._read_knowledge(known, bound)
            if not result.found:
                return None
            context = self._context(lookup, request, params, result)
            message = self.tenant.renderer.render(known.template, context)
        except (SourceError, InputRefused, TimeoutError, RenderError) as exc:
            log.warning(
                "lookup %s: the knowledge base failed too: %s",
                lookup.name,
                getattr(exc, "message", None) or type(exc).__name__,
                extra={"action": "lookup", "source": known.source_id},
            )
            return None
        if not message.strip():
            return None
        return Answer(
            Outcome.FALLBACK,
            message,
            request.reply_to,
            f"{reason}; answered from the knowledge base {known.source_id!r}",
            lookup.name,
            known.source_id,
            params=params,
        )

    async def _read_knowledge(self, known: Knowledge, bound: Bound) -> ReadResult:
        deadline = asyncio.get_running_loop().time() + known.timeout_s
        async with self.sources.reading(known.source_id, deadline) as connector:
            return await connector.run(known.query, bound, timeout_s=_left(deadline))

    def _refused(self, exc: InputRefused, lookup: Lookup, request: JobRequest) -> Answer:
        """The source refused the customer's value: `invalid_input`, the source is not at fault."""
        position = exc.argument or 0
        names = set(lookup.args)
        if 0 < position <= len(lookup.args):
            name: str | None = lookup.args[position - 1]
        else:  # the server did not say which value: with one, it is that one
            name = names.pop() if len(names) == 1 else None
        log.info(
            "lookup %s: the source refused a value: %s",
            lookup.name,
            exc.message,
            extra={"action": "lookup", "lookup": lookup.name, "source": lookup.source_id},
        )
        return self._invalid(refused_by_source(name, request.reply_to), lookup, request)

    def _invalid(self, exc: InvalidInput, lookup: Lookup | None, request: Any) -> Answer:
        template = lookup.invalid_input if lookup else self.tenant.defaults["invalid_input"]
        customer = request.customer if isinstance(request, JobRequest) else {}
        context = {
            "errors": exc.errors,
            "params": {},
            "row": {},
            "rows": [],
            "data": None,
            "customer": customer,
            "tenant_id": self.tenant.tenant_id,
            "lookup": lookup.name if lookup else None,
        }
        message = self._render(template, context) if exc.reply_to else None
        return Answer(
            Outcome.INVALID_INPUT,
            message,
            exc.reply_to,
            {"errors": exc.errors},
            lookup.name if lookup else None,
            lookup.source_id if lookup else None,
        )

    def _context(
        self,
        lookup: Lookup | None,
        request: JobRequest,
        params: dict[str, Any],
        result: ReadResult,
    ) -> dict[str, Any]:
        return {
            "params": params,
            "row": result.rows[0]
            if result.rows
            else (result.data if isinstance(result.data, Mapping) else {}),
            "rows": result.rows,
            "data": result.data,
            "customer": request.customer,
            "tenant_id": self.tenant.tenant_id,
            "lookup": lookup.name if lookup else request.query_type,
        }

    def _render(self, template: Template, context: Mapping[str, Any]) -> str:
        """Render a not-found/fallback/invalid text; if even that fails, a fixed sentence."""
        try:
            return self.tenant.renderer.render(template, context)
        except RenderError as exc:
            log.error("reply text failed to render: %s", exc, extra={"action": "render"})
            return "Sorry, something went wrong on our side. Please try again later."


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (the event loop's clock), for a source's own time limit."""
    return max(0.001, deadline - asyncio.get_running_loop().time())
