"""BPF_PROG_TEST_RUN: run a loaded TC program on packet bytes, in the kernel, without a device.

Through libbpf's bpf_prog_test_run_opts (libbpf.so.1, Debian's libbpf1). The kernel builds an skb
from the bytes (checksums complete, as scapy writes them), runs the program once (or `repeat`
times for a timing), and returns the verdict, the packet as the program left it, and the mean
run time. Maps keep whatever the program wrote, so packet sequences carry state.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

TC_ACT = {0: "pass", 2: "drop", 7: "redirect", -1: "unspec"}   # TC_ACT_OK, _SHOT, _REDIRECT
MAX_FRAME = 9216


class _Opts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


_lib = None


def _libbpf():
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
        _lib.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_Opts)]
        _lib.bpf_prog_test_run_opts.restype = ctypes.c_int
    return _lib


@dataclass
class RunResult:
    verdict: str      # pass | drop | redirect
    data: bytes       # the packet after the program
    duration_ns: int  # mean per run (meaningful with repeat > 1)


def run(prog_fd: int, data: bytes, repeat: int = 1) -> RunResult:
    buf_in = ctypes.create_string_buffer(bytes(data), len(data))
    buf_out = ctypes.create_string_buffer(MAX_FRAME)
    opts = _Opts(sz=ctypes.sizeof(_Opts), data_in=ctypes.cast(buf_in, ctypes.c_void_p),
                 data_out=ctypes.cast(buf_out, ctypes.c_void_p), data_size_in=len(data),
                 data_size_out=MAX_FRAME, repeat=repeat)
    if _libbpf().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    verdict = TC_ACT.get(ctypes.c_int32(opts.retval).value, f"tc_act_{opts.retval}")
    return RunResult(verdict, buf_out.raw[:opts.data_size_out], opts.duration)
