"""Every option of the simulator, shared by the CLI and by tests building an app in-process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_MODEL = "AgentPublic/fabrique-reference-2"

Delimiter = Literal["newline", "nul"]

_DELIMITER_BYTES: dict[str, bytes] = {"newline": b"\n", "nul": b"\0"}


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Options of one simulated vLLM server; rates are fractions of requests in [0, 1]."""

    host: str = "127.0.0.1"
    port: int = 8081
    models: tuple[str, ...] = field(default=(DEFAULT_MODEL,))
    max_num_seqs: int = 256
    prefill_ms: float = 0.0
    ms_per_token: float = 0.0
    max_model_len: int = 4096
    error_rate: float = 0.0
    cut_rate: float = 0.0
    midstream_error_rate: float = 0.0
    first_token_delay_ms: float = 0.0
    hang_rate: float = 0.0
    early_stop_rate: float = 0.0
    legacy_errors: bool = False
    generate_delimiter: Delimiter = "newline"
    fault_seed: int | None = None
    log_level: str = "info"
    api_key: str | None = None
    """As vLLM's --api-key: every /v1 route then wants `Authorization: Bearer <key>` (401 otherwise)."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one served model name is required")
        if self.max_num_seqs < 1 or self.max_model_len < 1:
            raise ValueError("max_num_seqs and max_model_len must be at least 1")
        if min(self.prefill_ms, self.ms_per_token, self.first_token_delay_ms) < 0:
            raise ValueError("delays must be non-negative")
        rates = (
            self.error_rate,
            self.cut_rate,
            self.midstream_error_rate,
            self.hang_rate,
            self.early_stop_rate,
        )
        if any(not 0.0 <= rate <= 1.0 for rate in rates):
            raise ValueError("rates must be in [0, 1]")
        if self.generate_delimiter not in _DELIMITER_BYTES:
            raise ValueError(f"unknown generate delimiter {self.generate_delimiter!r}")

    @property
    def delimiter(self) -> bytes:
        """Record separator of the legacy /generate stream."""
        return _DELIMITER_BYTES[self.generate_delimiter]
