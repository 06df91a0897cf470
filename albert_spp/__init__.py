"""`albert_spp`: a small typed client of an albert-spp server's jobs (needs only httpx and pydantic).

from albert_spp import Client

with Client() as client:  # $ALBERT_SPP_URL and $ALBERT_SPP_API_KEY
    job = client.submit("Ma carte grise n'a pas été reçue", template="spp")
    print(client.wait(job.id).text)
"""

from albert_spp.async_client import AsyncClient
from albert_spp.client import Client
from albert_spp.config import InsecureKeyWarning
from albert_spp.errors import (
    AlbertSppError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    WaitTimeout,
)
from albert_spp.events import Done, Event, Queued, Reset, Token
from albert_spp.models import (
    Deleted,
    Job,
    JobError,
    JobList,
    JobRequest,
    JobResult,
    JobStats,
    JobStatus,
    Message,
    Params,
    StatusCounts,
    Usage,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AlbertSppError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "Deleted",
    "Done",
    "Event",
    "InsecureKeyWarning",
    "InvalidRequest",
    "Job",
    "JobError",
    "JobList",
    "JobRequest",
    "JobResult",
    "JobStats",
    "JobStatus",
    "Message",
    "NotFound",
    "Params",
    "PermissionDenied",
    "Queued",
    "RateLimited",
    "Reset",
    "ServerError",
    "StatusCounts",
    "Token",
    "Usage",
    "WaitTimeout",
]
