"""The embedded QEMU microVM backend.

Modules: `config` (QemuConfig), `image` (debootstrap image build and cache, SSH key),
`guest_files` (what goes into the guest), `argv` (the QEMU command line, pure), `session`
(QMP and the guest agent channel), `machine` (one QEMU process: launch, adopt, shutdown),
`store` (instance and snapshot manifests), `util` (subprocesses, atomic files, pids), and
`driver` (QemuBackend: start-up adoption and reconcile), assembled from `backend_state`
(shared records, locks, disk pool), `boot_snapshots` (images, accelerator, boot snapshots),
`snapshots` (save, delete) and `instances` (lifecycle).
"""
