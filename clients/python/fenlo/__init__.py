"""The Fenlo Python SDK: generated stubs in ``fenlo.v1`` and a small async client.

```python
async with fenlo.Client("127.0.0.1:50051", token=token) as client:
    workspace = await client.workspaces.GetWorkspace(GetWorkspaceRequest(name=name))
```

See docs/python-sdk.md.
"""

from fenlo.chat import ChatSession
from fenlo.client import DEFAULT_TIMEOUT, RETRIED_METHODS, ChatApi, Client, service_config
from fenlo.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    FenloError,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    from_rpc_error,
    from_status,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RETRIED_METHODS",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "ChatApi",
    "ChatSession",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FenloError",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "QuotaViolation",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "from_rpc_error",
    "from_status",
    "service_config",
]
