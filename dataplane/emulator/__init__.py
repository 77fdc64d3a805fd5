"""The userspace emulator: a scenario's lab simulated in Python, with the reference model at the
hooks where the BPF programs sit (`dataplane run --backend model`, no root needed)."""
