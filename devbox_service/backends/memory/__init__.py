"""`MemoryBackend`: an in-memory `VMBackend`, for fast tests and demos, never production.

No QEMU, no disks, no guests: records in dicts, so nothing runs in a "VM" and nothing
survives the process. It copies the observable behaviour of `QemuBackend` (states, which call
raises what in which state, id checks, "already exists", branch roll-back, reference-counted
disk layers, lazily noticed VM deaths), so a service test that passes here does not rely on
anything the real driver would refuse; tests/contract runs the same checks on both.

Modules: `records` (instance and snapshot records), `state` (the stores and the lookups every
part uses), `hooks` (the test hooks: call log, injected failures, VM deaths, disk layers),
`snapshots` (images and snapshots) and `backend` (MemoryBackend: lifecycle and instances).

SSH endpoints point at 127.0.0.1 ports that were free when handed out (nothing listens):
whatever runs on this backend must not need SSH.
"""

from devbox_service.backends.memory.backend import MemoryBackend

__all__ = ["MemoryBackend"]
