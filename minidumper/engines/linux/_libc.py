"""libc, loaded once, with the prototypes of the calls the engine makes."""

import ctypes
import os


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


libc = ctypes.CDLL(None, use_errno=True)

libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long

libc.process_vm_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(iovec), ctypes.c_ulong,
    ctypes.POINTER(iovec), ctypes.c_ulong,
    ctypes.c_ulong,
]
libc.process_vm_readv.restype = ctypes.c_ssize_t


def last_os_error(call: str, pid: int) -> OSError:
    """An OSError naming the call, its errno and the pid it was made on."""
    err = ctypes.get_errno()
    return OSError(err, f"{call}(pid {pid}): {os.strerror(err)}")
