"""Utilities every layer may use and that know nothing of HAAQI's models: constants, the error
hierarchy, atomic writes, content hashes, device and executor choice, progress, interrupts and the
presentation-level convention."""
