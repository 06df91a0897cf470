"""/metrics in Prometheus text format: vLLM's scheduler gauges plus simulator-only counters for tests."""

from __future__ import annotations

from collections.abc import Iterable

from sim.config import SimConfig
from sim.stats import Stats


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines.extend(f"{name}{labels} {float(value)}" for labels, value in samples)
    return lines


def render_metrics(stats: Stats, config: SimConfig) -> str:
    models = config.models
    by_model = [f'{{model_name="{_label(m)}"}}' for m in models]
    lines = [
        *_family(
            "vllm:num_requests_running",
            "gauge",
            "Number of requests in model execution batches.",
            zip(by_model, (stats.running[m] for m in models), strict=True),
        ),
        *_family(
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            zip(by_model, (stats.waiting[m] for m in models), strict=True),
        ),
        *_family(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "KV-cache usage. 1 means 100 percent usage.",
            zip(by_model, (stats.running[m] / config.max_num_seqs for m in models), strict=True),
        ),
        *_family(
            "vllm:request_success_total",
            "counter",
            "Count of successfully processed requests.",
            (
                (f'{{finished_reason="{reason}",model_name="{_label(model)}"}}', count)
                for (model, reason), count in sorted(stats.successes.items())
            ),
        ),
        *_family(
            "sim_requests_total",
            "counter",
            "Generation requests received, by served model name and endpoint.",
            (
                (f'{{model="{_label(model)}",endpoint="{endpoint}"}}', count)
                for (model, endpoint), count in sorted(stats.by_model_endpoint.items())
            ),
        ),
        *_family(
            "sim_requests_aborted_total",
            "counter",
            "Requests whose client went away before the end.",
            [("", stats.aborted)],
        ),
        *_family(
            "sim_faults_total",
            "counter",
            "Injected faults, by kind.",
            ((f'{{kind="{kind}"}}', count) for kind, count in sorted(stats.faults.items())),
        ),
    ]
    return "\n".join(lines) + "\n"
