"""Running a planned completion through the scheduler: paced streams and one-shot answers."""

from __future__ import annotations

from sim.asgi import Emit
from sim.config import SimConfig
from sim.engine import Pacer, Scheduler
from sim.faults import Fault
from sim.params import GenParams
from sim.protocol import DONE, ENGINE_ERROR, ChunkEncoder, error_chunk, generate_record
from sim.stats import Stats
from sim.textgen import Plan


class Runner:
    """Each run holds a scheduler slot from admission to its last token.

    Stream faults strike at the token halfway through (`len(pieces) // 2`): a cut returns False
    so the connection is closed without [DONE]; a mid-stream error sends an error chunk and
    [DONE]. Neither counts as completed nor aborted.
    """

    def __init__(self, config: SimConfig, scheduler: Scheduler, stats: Stats) -> None:
        self._start_s = (config.prefill_ms + config.first_token_delay_ms) / 1000
        self._per_token_s = config.ms_per_token / 1000
        self._legacy_errors = config.legacy_errors
        self._delimiter = config.delimiter
        self._scheduler = scheduler
        self._stats = stats

    async def run_once(self, params: GenParams, plan: Plan) -> bool:
        """A non-streaming request: hold the slot until the last token is due; True when done."""
        async with self._scheduler.slot(params.model):
            await Pacer(self._start_s, self._per_token_s).until(len(plan.pieces) - 1)
            self._stats.record_success(params.model, plan.finish_reason)
        return True

    async def openai_stream(
        self, emit: Emit, params: GenParams, plan: Plan, encoder: ChunkEncoder, fault: Fault | None
    ) -> bool:
        pieces = plan.pieces
        last = len(pieces) - 1
        fault_at = len(pieces) // 2 if fault is not None else -1
        async with self._scheduler.slot(params.model):
            pacer = Pacer(self._start_s, self._per_token_s)
            for index, piece in enumerate(pieces):
                await pacer.until(index)
                if index == 0 and encoder.chat:
                    await emit(encoder.role())
                if index == fault_at:
                    if fault is Fault.CUT:
                        return False
                    await emit(error_chunk(ENGINE_ERROR, legacy=self._legacy_errors) + DONE)
                    return True
                if index < last:
                    await emit(encoder.token(piece))
                else:
                    await emit(encoder.finish(piece, plan.finish_reason, plan.stop_reason))
            self._stats.record_success(params.model, plan.finish_reason)
        if params.include_usage:
            await emit(encoder.usage(params.prompt_tokens, plan.completion_tokens) + DONE)
        else:
            await emit(DONE)
        return True

    async def generate_stream(self, emit: Emit, params: GenParams, plan: Plan, fault: Fault | None) -> bool:
        """Legacy /generate: each record repeats the prompt and all the text so far."""
        fault_at = len(plan.pieces) // 2 if fault is Fault.CUT else -1
        text = params.prompt
        async with self._scheduler.slot(params.model):
            pacer = Pacer(self._start_s, self._per_token_s)
            for index, piece in enumerate(plan.pieces):
                await pacer.until(index)
                if index == fault_at:
                    return False
                text += piece
                await emit(generate_record(text) + self._delimiter)
            self._stats.record_success(params.model, plan.finish_reason)
        return True
