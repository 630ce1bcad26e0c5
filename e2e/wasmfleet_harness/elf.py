"""What CPU a compiled file is for, read from its ELF header (wasmtime's compiled code is an
ELF file): evidence that does not take the agent's word for it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["EM_AARCH64", "EM_X86_64", "elf_machine"]

EM_X86_64 = 62
EM_AARCH64 = 183


def elf_machine(path: Path) -> int:
    """The ``e_machine`` field of the ELF file at ``path``."""
    with path.open("rb") as handle:
        header = handle.read(20)
    if header[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    return int.from_bytes(header[18:20], "little")
