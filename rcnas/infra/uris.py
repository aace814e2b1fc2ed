"""URIs the user hands rcnas (``--storage``, ``--data-root``: ``s3://``, ``gs://``, ``file://`` ...): recognising
one, printing it without secrets, and refusing one that carries credentials.

Here rather than in ``agents.storage`` because ``rcnas`` itself opens data-root URIs (``rcnas.data.remote_root``) and
``rcnas`` never imports ``agents``; ``agents.storage`` re-exports these names.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit


def is_uri(path: str | Path | None) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path: only strings, since a ``Path`` has
    already collapsed ``//``."""
    return isinstance(path, str) and "://" in path


_SECRET_PARAM = re.compile(r"key|secret|token|credential|passw|sig|sas|auth", re.IGNORECASE)
_CHAINS = {
    "s3": "the AWS credential chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN in the "
          "environment, AWS_PROFILE and ~/.aws/credentials, or the instance profile / IAM role)",
    "gs": "Google's application default credentials (gcloud auth application-default login, "
          "GOOGLE_APPLICATION_CREDENTIALS, or the VM's service account)",
    "abfs": "Azure's default credential chain (AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET in the "
            "environment, az login, or a managed identity)",
}
_CHAINS.update({"s3a": _CHAINS["s3"], "gcs": _CHAINS["gs"], "abfss": _CHAINS["abfs"], "az": _CHAINS["abfs"]})


def redact(uri: str) -> str:
    """``uri`` without what may be a secret (the user part of its host, its query): safe to print."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}" + ("?..." if parts.query else "")


def check_no_credentials(uri: str, flag: str = "--storage") -> None:
    """Refuse a URI that carries credentials (``s3://KEY:SECRET@bucket``, ``?secret_key=...``): Tune records its
    storage path in its state files and logs, and rcnas in summaries and hints, so a secret there ends up in the
    bucket and on screens. The error names the provider's credential chain and never echoes the secret.

    Raises:
        ConfigError: the URI has a user part or a credential-like query parameter.
    """
    parts = urlsplit(uri)
    where = []
    if "@" in parts.netloc:
        where.append("a user part before '@'")
    names = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)
                    if _SECRET_PARAM.search(k) and k.lower() != "credential_kind"})
    if names:
        where.append(f"the query parameter{'s' if len(names) > 1 else ''} {', '.join(names)}")
    if where:
        from rcnas.infra.errors import ConfigError

        chain = _CHAINS.get(parts.scheme.lower(), "the filesystem's own credential configuration (its environment "
                                                   "variables or config files)")
        raise ConfigError(f"{flag} {redact(uri)}: credentials in the URI ({' and '.join(where)}) would be stored in "
                          f"Tune's state files and logs; remove them and let {chain} supply them")
