"""Type stub of the compiled SHA-256d engine built from ext/_sha256d.pyx."""

Buffer = bytes | bytearray | memoryview

COMPILED_KERNELS: tuple[str, ...]
KERNELS: tuple[str, ...]
OMITTED_KERNELS: dict[str, str]
KERNEL_ENV: str
IMPLEMENTATION: str

def sha256d(data: Buffer) -> bytes: ...
def scan(
    header: Buffer, start: int, count: int, target: int, kernel: str | None = None
) -> list[int]: ...
