"""What the Docker daemon said when it said no, as exceptions the agent catches (agent/dockerapi.py raises them).

The hierarchy is the docker SDK's (`NotFound` is an `APIError`, `ImageNotFound` a `NotFound`),
so the transaction's branches read as they did with the SDK; `explanation` is the daemon's own
JSON `message` ("… is restarting", "Conflict. The container name … is already in use",
"sandbox … not found"), which is what the journal and the report quote.

`DaemonUnreachable` is no answer at all (socket missing, connection refused or dropped: a
dockerd restarting); it is the one failure worth retrying whatever the call was.
"""

from __future__ import annotations

# A 404 whose message says it was the image that is missing (as the SDK tells them apart).
_IMAGE_MISSING = ("no such image", "not found: does not exist or no pull access", "repository does not exist",
                  "was found but does not match the specified platform")


class DockerError(Exception):
    """Anything the Docker daemon could not do for the agent."""


class APIError(DockerError):
    """The daemon answered with an error: `status` is the HTTP status, `explanation` its message."""

    def __init__(self, explanation: str, status: int | None = None):
        self.explanation = explanation
        self.status = status
        super().__init__(explanation)


class NotFound(APIError):
    """No such container (or network, exec instance …): HTTP 404."""


class ImageNotFound(NotFound):
    """No such image here, or none the registry would give."""


class DaemonUnreachable(DockerError):
    """No answer: the daemon's socket is missing, refuses connections, or the connection dropped mid-call."""


class DaemonTimeout(DockerError):
    """The daemon took longer than the call's timeout to answer (not retried: the call may have taken effect)."""


class UnsupportedDockerHost(DockerError):
    """DOCKER_HOST names something other than a unix socket, which the agent does not speak."""


def error_for(status: int, explanation: str, image: bool = False) -> APIError:
    """The exception for an error answer (pure): 404 is NotFound (ImageNotFound for an image), anything else APIError."""
    if status == 404:
        text = explanation.lower()
        if image or any(m in text for m in _IMAGE_MISSING):
            return ImageNotFound(explanation, status)
        return NotFound(explanation, status)
    return APIError(explanation, status)
