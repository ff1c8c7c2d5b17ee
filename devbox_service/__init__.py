"""devbox-service: self-hostable devbox workspaces."""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# cryptography 51 deprecates DSA, and asyncssh (2.24.1 and older) touches it at import. Only that
# warning, only from asyncssh's crypto modules; pyproject.toml holds the same filter for pytest.
# Drop both once the asyncssh in uv.lock imports cleanly: `python -W error -c 'import asyncssh'`.
warnings.filterwarnings(
    "ignore",
    message="DSA is deprecated",
    category=CryptographyDeprecationWarning,
    module=r"asyncssh\.crypto\.",
)
