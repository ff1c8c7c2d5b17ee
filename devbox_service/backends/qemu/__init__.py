"""The embedded QEMU microVM backend.

Modules: `config` (QemuConfig), `image` (debootstrap image build and cache, SSH key),
`guest_files` (what goes into the guest), `machine` (one QEMU process: command line, QMP,
agent channel, shutdown), `store` (instance and snapshot manifests), `driver` (QemuBackend),
`guest` (asyncssh access for commands), `util` (subprocesses, atomic files, pids).
"""
