"""`albert-spp batch INPUT -o OUTPUT`: run a file of requests as one batch of the server, with progress and resume.

Steps: check the input (before anything is sent), upload it (SPP lines converted to chat requests), create the
batch, poll it while drawing a progress bar, download its output and error files to disk, write OUTPUT in input
order. A state file next to OUTPUT (`OUTPUT.batch.json`) names the batch, so that the same command run again
after an interruption resumes it; it is removed once OUTPUT is written.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal, TextIO, cast

import openai
import orjson
from openai import OpenAI
from openai.types import Batch

from albert_spp import config
from albert_spp.progress import Counts, Progress
from client.lines import MISSING, BatchInput, InputError, Kind, read_input, result_of, write_requests

DEFAULT_MAX_TOKENS = 1024  # SPP_MAX_TOKENS
DEFAULT_TEMPERATURE = 0.2  # SPP_TEMPERATURE
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
STATE_VERSION = 1

OK, SOME_FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130

Endpoint = Literal["/v1/chat/completions", "/v1/completions"]


class CommandError(Exception):
    """Stops the command with a message and an exit code."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Options:
    input: Path
    output: Path
    url: str
    api_key: str
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    raw: bool = False
    poll_interval: float = 1.0


@dataclass
class State:
    """What OUTPUT.batch.json keeps between runs."""

    input_sha256: str
    url: str
    options: dict[str, Any]
    input_file_id: str
    batch_id: str
    version: int = STATE_VERSION


def state_path(output: Path) -> Path:
    return output.with_name(output.name + ".batch.json")


def load_state(path: Path) -> State | None:
    try:
        data = orjson.loads(path.read_bytes())
        if data.get("version") != STATE_VERSION:
            return None
        return State(**data)
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, TypeError, AttributeError):
        return None  # not ours, or damaged: start over (and overwrite it)


def save_state(path: Path, state: State) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(orjson.dumps(asdict(state), option=orjson.OPT_INDENT_2) + b"\n")
    temporary.replace(path)


def normalized_url(url: str) -> str:
    """The server's root URL: no trailing slash, no `/v1` (the client adds it)."""
    return config.root(url)


class BatchCommand:
    def __init__(self, options: Options, err: TextIO | None = None) -> None:
        self.options = options
        self.err = err or sys.stderr
        self.url = normalized_url(options.url)
        self.state_file = state_path(options.output)
        self.batch_id: str | None = None
        if (danger := config.insecure(self.url, options.api_key)) is not None:
            self.say(f"warning: {danger}")
        # A few retries with backoff for a server restarting; timeouts long enough for large uploads.
        self.client = OpenAI(base_url=self.url + "/v1", api_key=options.api_key, max_retries=3, timeout=120)

    def say(self, message: str) -> None:
        print(message, file=self.err, flush=True)

    # ---- the steps ---------------------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        self.check_paths()
        try:
            source = read_input(options.input)
        except InputError as exc:
            raise CommandError(f"{options.input}: {exc}; nothing was sent") from None
        request_options = self.request_options(source)
        batch = self.resume(source, request_options)
        if batch is None:
            batch = self.start(source, request_options)
        self.batch_id = batch.id
        batch = self.poll(batch)
        if batch.status == "failed":
            self.state_file.unlink(missing_ok=True)
            raise CommandError(self.validation_errors(batch))
        return self.write_output(source, batch)

    def check_paths(self) -> None:
        options = self.options
        if not options.input.is_file():
            raise CommandError(f"{options.input}: no such file")
        if not options.output.parent.is_dir():
            raise CommandError(f"{options.output.parent}: no such directory for the output")
        if options.output.exists() and options.output.resolve() == options.input.resolve():
            raise CommandError("the output would overwrite the input")

    def request_options(self, source: BatchInput) -> dict[str, Any]:
        """The options that shape the uploaded requests (part of what a resumed run must match)."""
        options = self.options
        if source.kind is Kind.OPENAI:
            given = [name for name in ("model", "max_tokens", "temperature") if getattr(options, name) is not None]
            if given:
                flags = ", ".join("--" + name.replace("_", "-") for name in given)
                self.say(f"note: {flags} ignored: OpenAI batch lines carry their own bodies")
            return {"kind": source.kind.value}
        return {
            "kind": source.kind.value,
            "model": options.model,
            "max_tokens": options.max_tokens if options.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "temperature": options.temperature if options.temperature is not None else DEFAULT_TEMPERATURE,
        }

    def resume(self, source: BatchInput, request_options: dict[str, Any]) -> Batch | None:
        """The batch of the state file if it is this command's and still exists on the server."""
        state = load_state(self.state_file)
        if state is None:
            return None
        if (state.input_sha256, state.url, state.options) != (source.sha256, self.url, request_options):
            self.say(f"{self.state_file} names another input, server or options: starting a new batch")
            return None
        try:
            batch = self.client.batches.retrieve(state.batch_id)
        except openai.NotFoundError:
            self.say(f"batch {state.batch_id} no longer exists on {self.url}: starting a new batch")
            return None
        self.say(f"resuming batch {batch.id} ({batch.status}); its state is in {self.state_file}")
        return batch

    def start(self, source: BatchInput, request_options: dict[str, Any]) -> Batch:
        if source.kind is Kind.SPP:
            model = request_options["model"] or self.default_model()
            with tempfile.TemporaryFile() as upload:
                with source.path.open("rb") as lines:
                    write_requests(lines, upload, model, request_options["max_tokens"], request_options["temperature"])
                upload.seek(0)
                uploaded = self.client.files.create(file=(source.path.name, upload), purpose="batch")
        else:
            with source.path.open("rb") as lines:
                uploaded = self.client.files.create(file=(source.path.name, lines), purpose="batch")
        endpoint = cast(Endpoint, source.endpoint)
        batch = self.client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")
        self.batch_id = batch.id
        save_state(self.state_file, State(source.sha256, self.url, request_options, uploaded.id, batch.id))
        self.say(f"created batch {batch.id} ({len(source.ids)} requests to {source.endpoint}) on {self.url}")
        return batch

    def default_model(self) -> str:
        models = self.client.models.list().data
        if not models:
            raise CommandError(f"{self.url} serves no model")
        return models[0].id

    def poll(self, batch: Batch) -> Batch:
        progress = Progress(self.err)
        try:
            while True:
                counts = batch.request_counts
                total, completed, failed = (counts.total, counts.completed, counts.failed) if counts else (0, 0, 0)
                progress.update(Counts(batch.status, total, completed, failed))
                if batch.status in ENDED:
                    return batch
                time.sleep(self.options.poll_interval)
                batch = self.retrieve(batch.id, progress)
        finally:
            progress.close()

    def retrieve(self, batch_id: str, progress: Progress) -> Batch:
        """The batch; a server unreachable for a while (after the client's retries) is waited for."""
        while True:
            try:
                return self.client.batches.retrieve(batch_id)
            except (openai.APIConnectionError, openai.InternalServerError) as exc:
                progress.close()
                self.say(f"{self.url} does not answer ({exc}); trying again")
                time.sleep(max(self.options.poll_interval, 2.0))

    def validation_errors(self, batch: Batch) -> str:
        errors = batch.errors.data if batch.errors and batch.errors.data else []
        lines = [f"batch {batch.id} failed: the server refused the input"]
        for error in errors:
            where = f"line {error.line}" if error.line is not None else "file"
            param = f", {error.param}" if error.param else ""
            lines.append(f"  {where}: {error.message} ({error.code}{param})")
        return "\n".join(lines)

    # ---- the output ----------------------------------------------------------------------------------

    def write_output(self, source: BatchInput, batch: Batch) -> int:
        output = self.options.output
        with tempfile.TemporaryDirectory(prefix=".albert-spp-", dir=output.parent) as folder:
            files = [
                self.download(file_id, Path(folder) / f"{kind}.jsonl")
                for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id))
                if file_id
            ]
            temporary = Path(folder) / "result.jsonl"
            with temporary.open("wb") as target:
                if self.options.raw:
                    answered, failed = copy_lines(files, target)
                else:
                    answered, failed = ordered_results(source.ids, files, target)
            temporary.replace(output)
        self.state_file.unlink(missing_ok=True)
        self.say(f"batch {batch.id} {batch.status}: {answered} answered, {failed} failed -> {output}")
        return OK if failed == 0 and batch.status == "completed" else SOME_FAILED

    def download(self, file_id: str, path: Path) -> Path:
        """The file's content streamed to `path`, never whole in memory."""
        with self.client.files.with_streaming_response.content(file_id) as response, path.open("wb") as target:
            for chunk in response.iter_bytes(1 << 16):
                target.write(chunk)
        return path


def copy_lines(files: list[Path], target: IO[bytes]) -> tuple[int, int]:
    """--raw: the output file's lines, then the error file's, as they came; (answered, failed)."""
    answered = failed = 0
    for path in files:
        with path.open("rb") as lines:
            for raw in lines:
                if not raw.strip():
                    continue
                result = result_of(orjson.loads(raw))
                answered, failed = (answered + 1, failed) if "answer" in result else (answered, failed + 1)
                target.write(raw if raw.endswith(b"\n") else raw + b"\n")
    return answered, failed


def ordered_results(ids: list[str], files: list[Path], target: IO[bytes]) -> tuple[int, int]:
    """One `{"id", "answer" | "error"}` line per input id, in input order; (answered, failed).

    The downloaded files are indexed (custom_id -> offset) rather than loaded: a 50,000-line batch of long
    answers stays on disk, and each line is read back once.
    """
    index: dict[str, tuple[int, int, int]] = {}  # custom_id -> (file, offset, length)
    for number, path in enumerate(files):
        offset = 0
        with path.open("rb") as lines:
            for raw in lines:
                if raw.strip():
                    custom_id = orjson.loads(raw).get("custom_id")
                    if isinstance(custom_id, str):
                        index.setdefault(custom_id, (number, offset, len(raw)))
                offset += len(raw)
    answered = failed = 0
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(path.open("rb")) for path in files]
        for item_id in ids:
            place = index.get(item_id)
            if place is None:
                result: dict[str, Any] = {"id": item_id, "error": MISSING}
            else:
                handle = handles[place[0]]
                handle.seek(place[1])
                result = result_of(orjson.loads(handle.read(place[2])))
            answered, failed = (answered + 1, failed) if "answer" in result else (answered, failed + 1)
            target.write(orjson.dumps(result) + b"\n")
    return answered, failed


def run(options: Options, err: TextIO | None = None) -> int:
    """The command; its exit code. Ctrl-C leaves a created batch running and says how to resume it."""
    command = BatchCommand(options, err)
    return run_command(command, command.err)


def run_command(command: BatchCommand, err: TextIO) -> int:
    try:
        return command.run()
    except CommandError as exc:
        print(f"albert-spp batch: {exc}", file=err)
        return exc.code
    except openai.AuthenticationError:
        print(f"albert-spp batch: {command.url} refused the API key (--api-key, ALBERT_SPP_API_KEY)", file=err)
        return USAGE
    except openai.APIConnectionError as exc:
        print(f"albert-spp batch: cannot reach {command.url}: {exc}", file=err)
        return USAGE
    except openai.APIStatusError as exc:
        print(f"albert-spp batch: {command.url} answered {exc.status_code}: {exc.message}", file=err)
        return USAGE
    except KeyboardInterrupt:
        print(file=err)
        if command.batch_id is None or not command.state_file.exists():
            created = f"batch {command.batch_id} was created but not recorded" if command.batch_id else "no batch"
            print(f"albert-spp batch: interrupted ({created}); the same command starts a new batch", file=err)
        else:
            print(
                f"albert-spp batch: interrupted; batch {command.batch_id} keeps running on the server.\n"
                f"Run the same command again to resume it (state in {command.state_file}).",
                file=err,
            )
        return INTERRUPTED
