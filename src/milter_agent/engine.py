"""The configured pipeline: address rules and message filters in file order, for one message.

Rules of the chain (the seed's, with the decisions in docs/configuration.md):
- Sections run in file order; a filter runs only when all its conditions hold.
- reject / tempfail / accept / discard stop the chain; continue goes on.
- A filter error (cannot start, signal, timeout) is counted; at the threshold (-m or the
  filter's error_threshold) the filter is switched off with a warning. With -E the message is
  tempfailed; otherwise the filter is skipped and the chain goes on.
- A filter in monitor mode runs and is counted, but its verdict and changes are not applied:
  what it would have done is logged and counted as ``monitor:VERDICT``. Its errors are logged
  and counted (``monitor:error``, and toward the threshold) but never decide the message, even
  with -E.
- No free instance (or module worker) within task_timeout is no filter error: the filter did
  not run. It is counted as a queue timeout and skipped, or with -E the message is tempfailed.
- A spool failure under a filter (a full disk) is not its error either: the message is
  tempfailed with 452 4.3.1, counted as a run of that filter with the verdict tempfail.
- Changes are applied to the working copy as they come, so later sections see them, and sent as
  milter actions at the end only if the message is delivered (continue or accept).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from milter_agent.config.model import AddressRule, Config, FilterSpec
from milter_agent.errors import FilterError, SpoolError
from milter_agent.filters.address import apply_address_rule
from milter_agent.filters.module import run_module_filter
from milter_agent.filters.program import run_program_filter
from milter_agent.filters.results import FilterResult, make_reply, spool_failed
from milter_agent.message import Message
from milter_agent.pipeline import Decision, Reply, StepResult, Verdict
from milter_agent.registry import FilterState, NoFreeInstance, Registry
from milter_agent.spool import Spool
from milter_agent.work import MessageWork, Refusal, variable_values

log = logging.getLogger("milter_agent.engine")


class Engine:
    """A :class:`~milter_agent.pipeline.Pipeline` built from one immutable configuration."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        spool: Spool,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.registry = registry
        self.spool = spool
        self.now = now
        self.wants_content = bool(config.filters)
        for spec in config.filters:
            registry.get(spec.name).mode = spec.mode

    def decide_now(self, message: Message) -> Decision | None:
        """The decision without waiting, when no message filter is configured (address rules
        only, or nothing at all): the server then answers within its read callback. None
        otherwise: then :meth:`run` decides."""
        if self.wants_content:
            return None
        decision = Decision()
        if not self.config.sections:
            return decision
        work = MessageWork(message, self.spool, self.settings)
        try:
            for rule in self.config.sections:
                assert isinstance(rule, AddressRule)  # no filters: only rules
                self._address(rule, work, decision)
            decision.changes = work.net_changes()
        finally:
            work.cleanup(keep_body=False)
        return decision

    async def run(self, message: Message) -> Decision:
        work = MessageWork(message, self.spool, self.settings)
        decision = Decision()
        try:
            for section in self.config.sections:
                if isinstance(section, AddressRule):
                    self._address(section, work, decision)
                    continue
                verdict, reply = await self._filter(section, work, decision)
                if verdict.stops_chain:
                    decision.verdict, decision.reply = verdict, reply
                    break
            if decision.verdict in (Verdict.CONTINUE, Verdict.ACCEPT):
                decision.changes = work.net_changes()
        finally:
            work.cleanup(keep_body=decision.changes.new_body is not None)
        return decision

    def _refusal(self, name: str) -> Refusal:
        state = self.registry.get(name)

        def refused(what: str, switch: str) -> None:
            if state.refused_once(what.split(" ", maxsplit=1)[0] + switch):
                log.warning("%s: %s refused: option %s is not given", name, what, switch)

        return refused

    def _address(self, rule: AddressRule, work: MessageWork, decision: Decision) -> None:
        # the engine's clock, as for filters' run_time/skip_time: tests inject a fixed one
        done = apply_address_rule(
            rule, work, lambda: variable_values(work), self._refusal(rule.name), self.now()
        )
        if done:
            state = self.registry.get(rule.name)
            state.record_run("matched", 0.0)
            state.changes += sum(1 for change in done if change != "matched")
            decision.steps.append(StepResult(rule.name, ",".join(done)))

    async def _filter(
        self, spec: FilterSpec, work: MessageWork, decision: Decision
    ) -> tuple[Verdict, Reply | None]:
        state = self.registry.get(spec.name)
        if state.disabled and not self._cooled_down(spec, state):
            state.skipped += 1
            decision.steps.append(StepResult(spec.name, "skipped:disabled"))
            return Verdict.CONTINUE, None
        started = time.monotonic()
        try:
            reason = self._skip_reason(spec, work)
            if reason is not None:
                self._skipped(spec, state, reason, work, decision)
                return Verdict.CONTINUE, None
            result = await self._execute(spec, work, state)
        except NoFreeInstance as exc:
            seconds = time.monotonic() - started
            return self._no_free_instance(spec, str(exc), seconds, work, decision)
        except SpoolError as exc:
            # A full disk under the filter (its files, the rewritten message, a new body) is
            # not its fault: a run with the verdict tempfail (452 4.3.1), not a filter error.
            result = spool_failed(spec.name, _queue_id(work), exc)
        except FilterError as exc:
            return self._failed(spec, state, str(exc), time.monotonic() - started, decision)
        except Exception as exc:
            if spec.mode != "monitor":
                raise  # the session answers with default_action
            # Whatever goes wrong inside a monitor filter must not decide the message.
            log.exception("filter %s (monitor) failed", spec.name)
            reason = f"internal error: {exc!r}"
            return self._failed(spec, state, reason, time.monotonic() - started, decision)
        seconds = time.monotonic() - started
        if spec.mode == "monitor":
            self._monitored(spec, result, work, seconds, decision)
            return Verdict.CONTINUE, None
        state.record_run(result.verdict, seconds)
        decision.steps.append(StepResult(spec.name, result.verdict, seconds, result.note))
        verdict = Verdict(result.verdict)
        if verdict in (Verdict.CONTINUE, Verdict.ACCEPT):
            self._apply(spec, result, work)
        elif result.new_body is not None:
            result.new_body.unlink(missing_ok=True)
        return verdict, make_reply(spec, result.verdict, result.text, result.reply_code)

    def _skipped(
        self,
        spec: FilterSpec,
        state: FilterState,
        reason: str,
        work: MessageWork,
        decision: Decision,
    ) -> None:
        state.skipped += 1
        decision.steps.append(StepResult(spec.name, f"skipped:{reason}"))
        if reason == "max_message_size":  # the others are ordinary; this one may surprise
            log.info(
                "%s: filter %s skipped: %d bytes is over max_message_size",
                _queue_id(work),
                spec.name,
                work.message.size,
            )

    def _no_free_instance(
        self,
        spec: FilterSpec,
        reason: str,
        seconds: float,
        work: MessageWork,
        decision: Decision,
    ) -> tuple[Verdict, Reply | None]:
        """Every instance (or module worker) stayed busy for task_timeout, so the filter did
        not run: counted as a queue timeout and a skip, never toward -m. The message is treated
        as for an error otherwise: tempfailed with -E (unless the filter only monitors), else
        it goes on without this filter."""
        state = self.registry.get(spec.name)
        state.queue_timeouts += 1
        state.skipped += 1
        tempfail = self.settings.stop_on_error and spec.mode != "monitor"
        log.warning(
            "%s: filter %s: %s (%d running, %d waiting); %s",
            _queue_id(work),
            spec.name,
            reason,
            state.running,
            state.waiting,
            "message tempfailed (-E)" if tempfail else "message goes on without it",
        )
        outcome = "tempfail" if tempfail else "skipped"
        decision.steps.append(StepResult(spec.name, f"{outcome}:no_free_instance", seconds, reason))
        if tempfail:
            return Verdict.TEMPFAIL, make_reply(spec, "tempfail", ())
        return Verdict.CONTINUE, None

    def _monitored(
        self,
        spec: FilterSpec,
        result: FilterResult,
        work: MessageWork,
        seconds: float,
        decision: Decision,
    ) -> None:
        """mode = monitor: count and log what the filter would have done, apply none of it.
        Counted as ``monitor:VERDICT`` so its counts never mix with enforced verdicts."""
        outcome = f"monitor:{result.verdict}"
        self.registry.get(spec.name).record_run(outcome, seconds)
        would = would_do(spec, result)
        log.info(
            "%s: filter %s (monitor) would %s%s",
            _queue_id(work),
            spec.name,
            result.verdict,
            "".join(f"; {what}" for what in would),
        )
        detail = "; ".join(part for part in (result.note, *would) if part)
        decision.steps.append(StepResult(spec.name, outcome, seconds, detail))
        if result.new_body is not None:
            result.new_body.unlink(missing_ok=True)

    def _cooled_down(self, spec: FilterSpec, state: FilterState) -> bool:
        """error_cooldown: a filter switched off by its threshold comes back after a while."""
        if not spec.error_cooldown or state.disabled_at is None or not state.by_threshold:
            return False
        if time.time() - state.disabled_at < spec.error_cooldown:
            return False
        state.enable()
        state.reenabled_at = time.time()
        log.warning("filter %s switched on again after error_cooldown", spec.name)
        return True

    def _skip_reason(self, spec: FilterSpec, work: MessageWork) -> str | None:
        try:
            return spec.skip_reason(
                work.message.sender_address,
                work.recipient_addresses,
                work.subject,
                self.now(),
                work.message.size,
            )
        except TimeoutError:  # a runaway regular expression (see conditions.REGEX_TIMEOUT)
            raise FilterError("a condition's regular expression took too long") from None

    async def _execute(
        self, spec: FilterSpec, work: MessageWork, state: FilterState
    ) -> FilterResult:
        if spec.is_module:
            return await run_module_filter(spec, work, state, self.settings)
        return await run_program_filter(spec, work, state, self.settings)

    def _apply(self, spec: FilterSpec, result: FilterResult, work: MessageWork) -> None:
        refused = self._refusal(spec.name)
        if result.new_body is not None:
            work.replace_body(result.new_body, refused)
        for name in result.remove_headers:
            work.remove_header(name, refused)
        for name, value in result.headers:
            work.change_header(name, value, refused)
        for name, value in result.add_headers:
            work.add_header(name, value, refused)
        for address in result.remove_recipients:
            work.remove_recipient(address, refused)
        for address in result.add_recipients:
            work.add_recipient(address, refused)

    def _failed(
        self, spec: FilterSpec, state: FilterState, reason: str, seconds: float, decision: Decision
    ) -> tuple[Verdict, Reply | None]:
        threshold = spec.error_threshold
        if threshold is None:
            threshold = self.settings.error_threshold
        monitor = spec.mode == "monitor"
        log.warning(
            "filter %s%s failed: %s", spec.name, " (monitor, the message goes on)" * monitor, reason
        )
        # A monitor filter's errors count toward its threshold too: one that keeps failing
        # (timing out, say) still costs every message its time, and being switched off is
        # logged and noticed like any other filter's.
        if state.record_error(reason, threshold):
            log.warning("filter %s switched off: %s", spec.name, state.disabled_reason)
        if monitor:
            state.record_run("monitor:error", seconds)
            enforced = "tempfail the message (-E)" if self.settings.stop_on_error else "be skipped"
            detail = f"{reason}; enforced, it would {enforced}"
            decision.steps.append(StepResult(spec.name, "monitor:error", seconds, detail))
            return Verdict.CONTINUE, None
        state.observe(seconds)
        if self.settings.stop_on_error:
            decision.steps.append(StepResult(spec.name, "error:tempfail", seconds, reason))
            return Verdict.TEMPFAIL, None
        decision.steps.append(StepResult(spec.name, "error:skipped", seconds, reason))
        return Verdict.CONTINUE, None


def _queue_id(work: MessageWork) -> str:
    return work.message.queue_id or "NOQUEUE"


def reply_text(reply: Reply) -> str:
    """``550 5.7.1 first line / second line``, for logs and reports."""
    return " ".join(part for part in (reply.code, reply.enhanced, " / ".join(reply.lines)) if part)


def would_do(spec: FilterSpec, result: FilterResult) -> list[str]:
    """What an enforced filter would have done with ``result``, in words (monitor mode).
    Changes are listed only for continue and accept: only those verdicts apply them."""
    reply = make_reply(spec, result.verdict, result.text, result.reply_code)
    if reply is not None:
        return [f"would reply {reply_text(reply)}"]
    if result.verdict not in ("continue", "accept"):
        return []
    flat = " ".join  # folded header values on one log line

    return [
        *(["would replace the body"] if result.new_body is not None else []),
        *(f"would remove header {name}" for name in result.remove_headers),
        *(f"would set header {name}: {flat(value.split())}" for name, value in result.headers),
        *(f"would add header {name}: {flat(value.split())}" for name, value in result.add_headers),
        *(f"would remove recipient {address}" for address in result.remove_recipients),
        *(f"would add recipient {address}" for address in result.add_recipients),
    ]
