"""Which fault, if any, a request suffers: drawn from one seeded RNG so runs are reproducible."""

from __future__ import annotations

import random
from enum import StrEnum

from sim.config import SimConfig


class Fault(StrEnum):
    HANG = "hang"  # never answer; hold the connection until the client goes away
    ERROR = "error"  # HTTP 500 with vLLM's error body
    CUT = "cut"  # stream only: TCP connection closed mid-way, without [DONE]
    MIDSTREAM_ERROR = "midstream_error"  # stream only: an error chunk then [DONE] mid-way


class FaultInjector:
    """Draws faults in a fixed precedence (hang, error, cut, mid-stream error): the first that fires wins.

    A kind whose rate is 0 draws nothing, so the default configuration never touches the RNG.
    """

    def __init__(self, config: SimConfig) -> None:
        self._rng = random.Random(config.fault_seed)
        self._common = ((Fault.HANG, config.hang_rate), (Fault.ERROR, config.error_rate))
        self._streaming = ((Fault.CUT, config.cut_rate), (Fault.MIDSTREAM_ERROR, config.midstream_error_rate))

    def decide(self, *, stream: bool, error_chunks: bool = True) -> Fault | None:
        """The fault of one valid request; `error_chunks` is False where the protocol has none (/generate)."""
        candidates = list(self._common)
        if stream:
            candidates.append(self._streaming[0])
            if error_chunks:
                candidates.append(self._streaming[1])
        for fault, rate in candidates:
            if rate > 0 and self._rng.random() < rate:
                return fault
        return None
