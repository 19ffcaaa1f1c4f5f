"""Checks a real distro image's view of the injected driver, the way real programs look for it.

1. Triton's libcuda_dirs(): `ldconfig -p`, the directory of libcuda.so.1, and that file in it.
2. The CUDA driver API through ctypes, loading a PTX-only kernel: the driver JIT-compiles it
   (libnvidia-ptxjitcompiler must load), the kernel runs, the result is checked.
3. Which libcuda the process mapped (from /proc/self/maps).
"""
import ctypes
import os
import subprocess
import sys

libs = subprocess.check_output(["/sbin/ldconfig", "-p"]).decode()
locs = [line.split()[-1] for line in libs.splitlines() if "libcuda.so.1" in line]
dirs = [os.path.dirname(loc) for loc in locs]
if any(os.path.exists(os.path.join(d, "libcuda.so.1")) for d in dirs):
    print("TRITON OK", dirs)
else:
    print("TRITON FAIL: libcuda.so cannot found!", locs)

PTX = rb"""
.version 7.0
.target sm_50
.address_size 64
.visible .entry fill(.param .u64 out, .param .u32 n)
{
    .reg .pred p;
    .reg .b32 r<5>;
    .reg .b64 rd<4>;
    ld.param.u64 rd1, [out];
    ld.param.u32 r1, [n];
    mov.u32 r2, %ctaid.x;
    mov.u32 r3, %ntid.x;
    mov.u32 r4, %tid.x;
    mad.lo.s32 r2, r2, r3, r4;
    setp.ge.u32 p, r2, r1;
    @p bra DONE;
    cvta.to.global.u64 rd2, rd1;
    mul.wide.u32 rd3, r2, 4;
    add.s64 rd2, rd2, rd3;
    mul.lo.s32 r3, r2, 3;
    st.global.u32 [rd2], r3;
DONE:
    ret;
}
"""


def ptx_jit():
    cuda = ctypes.CDLL("libcuda.so.1")

    def ok(rc, what):
        if rc != 0:
            raise RuntimeError(f"{what} returned {rc}")

    ok(cuda.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    ok(cuda.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    ok(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    ok(cuda.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    mod = ctypes.c_void_p()
    ok(cuda.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(PTX + b"\0")), "cuModuleLoadData (PTX JIT)")
    fn = ctypes.c_void_p()
    ok(cuda.cuModuleGetFunction(ctypes.byref(fn), mod, b"fill"), "cuModuleGetFunction")
    n = 1 << 20
    dptr = ctypes.c_uint64()
    ok(cuda.cuMemAlloc_v2(ctypes.byref(dptr), n * 4), "cuMemAlloc")
    count = ctypes.c_uint32(n)
    args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(dptr), ctypes.c_void_p),
                                 ctypes.cast(ctypes.byref(count), ctypes.c_void_p))
    ok(cuda.cuLaunchKernel(fn, (n + 255) // 256, 1, 1, 256, 1, 1, 0, None, args, None), "cuLaunchKernel")
    ok(cuda.cuCtxSynchronize(), "cuCtxSynchronize")
    host = (ctypes.c_uint32 * n)()
    ok(cuda.cuMemcpyDtoH_v2(host, dptr, n * 4), "cuMemcpyDtoH")
    bad = sum(1 for i in range(0, n, 997) if host[i] != (3 * i) & 0xFFFFFFFF)
    if bad:
        raise RuntimeError(f"{bad} wrong elements")


try:
    ptx_jit()
    print("PTXJIT PASS")
except Exception as e:  # noqa: BLE001 - report any failure as a check result
    print("PTXJIT FAIL", e)

maps = open("/proc/self/maps").read().splitlines()
mapped = sorted({line.split()[-1] for line in maps if "libcuda.so" in line or "ptxjitcompiler" in line})
print("MAPPED", " ".join(mapped))
sys.exit(0)
