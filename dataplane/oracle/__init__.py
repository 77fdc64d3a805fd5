"""The pure-Python reference model of the dataplane: the oracle for the BPF programs and the
packet engine of the emulator. See datapath.py and docs/datapath.md."""
