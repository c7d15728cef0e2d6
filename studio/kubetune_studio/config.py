"""The studio's settings, read from the environment when the server or a command starts (never
at import). Secrets (the database URL's password, the admin password) come only from here, which
in the cluster means from Kubernetes Secrets."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, Field, ValidationError

from kubetune_studio.errors import Invalid

PREFIX = "KUBETUNE_STUDIO_"


class Settings(BaseModel):
    database_url: str = "sqlite:///studio.db"
    """KUBETUNE_STUDIO_DATABASE_URL: ``postgresql://user:password@host/db`` or ``sqlite:///path``."""
    snapshot_root: str = "snapshots"
    """KUBETUNE_STUDIO_SNAPSHOT_ROOT: where snapshots are written: a path (a mounted PVC) or
    ``s3://bucket/prefix``."""
    admin_email: str | None = None
    """KUBETUNE_STUDIO_ADMIN_EMAIL / KUBETUNE_STUDIO_ADMIN_PASSWORD: an admin account created
    (or given this password) when the server starts."""
    admin_password: str | None = None
    secure_cookies: bool = False
    """KUBETUNE_STUDIO_SECURE_COOKIES: mark cookies Secure (behind TLS)."""
    session_hours: float = Field(default=12.0, gt=0)
    max_body_bytes: int = Field(default=65_536, gt=0)
    """KUBETUNE_STUDIO_MAX_BODY_BYTES: the largest request body (imports have their own limit)."""
    max_import_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    rate_limit: str = "600/minute"
    """KUBETUNE_STUDIO_RATE_LIMIT: requests per client (a labeler, else an address), in the
    ``limits`` library's notation."""
    login_rate_limit: str = "10/minute"
    assignment_lease_minutes: float = Field(default=30.0, gt=0)
    """How long an item handed to a labeler counts toward its overlap without a vote."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for name in cls.model_fields:
            raw = environ.get(PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            variable = PREFIX + str(first["loc"][0]).upper()
            raise Invalid(f"{variable}: {first['msg']}") from None
