"""The configured pipeline: address rules and message filters in file order, for one message.

Rules of the chain (the seed's, with the decisions in docs/configuration.md):
- Sections run in file order; a filter runs only when all its conditions hold.
- reject / tempfail / accept / discard stop the chain; continue goes on.
- A filter error (cannot start, signal, timeout) is counted; at the threshold (-m or the
  filter's error_threshold) the filter is switched off with a warning. With -E the message is
  tempfailed; otherwise the filter is skipped and the chain goes on.
- A filter in monitor mode runs and is counted, but its verdict and changes are not applied.
- Changes are applied to the working copy as they come, so later sections see them, and sent as
  milter actions at the end only if the message is delivered (continue or accept).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from milter_agent.config.model import AddressRule, Config, FilterSpec
from milter_agent.errors import FilterError
from milter_agent.filters.address import apply_address_rule
from milter_agent.filters.module import run_module_filter
from milter_agent.filters.program import run_program_filter
from milter_agent.filters.results import FilterResult, make_reply
from milter_agent.message import Message
from milter_agent.pipeline import Decision, Reply, StepResult, Verdict
from milter_agent.registry import FilterState, Registry
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
        done = apply_address_rule(
            rule, work, lambda: variable_values(work), self._refusal(rule.name)
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
                state.skipped += 1
                decision.steps.append(StepResult(spec.name, f"skipped:{reason}"))
                if reason == "max_message_size":
                    log.info(
                        "%s: filter %s skipped: %d bytes is over max_message_size",
                        work.message.queue_id or "NOQUEUE",
                        spec.name,
                        work.message.size,
                    )
                return Verdict.CONTINUE, None
            result = await self._execute(spec, work, state)
        except FilterError as exc:
            seconds = time.monotonic() - started
            return self._failed(spec, state, str(exc), seconds, decision)
        seconds = time.monotonic() - started
        state.record_run(result.verdict, seconds)
        if spec.mode == "monitor":
            log.info("%s: monitor: would %s %s", work.message.queue_id, result.verdict, spec.name)
            decision.steps.append(StepResult(spec.name, f"monitor:{result.verdict}", seconds))
            if result.new_body is not None:
                result.new_body.unlink(missing_ok=True)
            return Verdict.CONTINUE, None
        decision.steps.append(StepResult(spec.name, result.verdict, seconds, result.note))
        verdict = Verdict(result.verdict)
        if verdict in (Verdict.CONTINUE, Verdict.ACCEPT):
            self._apply(spec, result, work)
        elif result.new_body is not None:
            result.new_body.unlink(missing_ok=True)
        return verdict, make_reply(spec, result.verdict, result.text, result.reply_code)

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
        log.warning("filter %s failed: %s", spec.name, reason)
        if state.record_error(reason, threshold):
            log.warning("filter %s switched off: %s", spec.name, state.disabled_reason)
        state.observe(seconds)
        if self.settings.stop_on_error:
            decision.steps.append(StepResult(spec.name, "error:tempfail", seconds, reason))
            return Verdict.TEMPFAIL, None
        decision.steps.append(StepResult(spec.name, "error:skipped", seconds, reason))
        return Verdict.CONTINUE, None
