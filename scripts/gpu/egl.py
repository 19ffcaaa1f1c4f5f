"""Finds the NVIDIA EGL driver the way a headless renderer does: glvnd's libEGL, the device
platform (EGL_EXT_device_enumeration + EGL_EXT_platform_device), then the display's vendor."""
import ctypes
import sys

EGL_VENDOR = 0x3053
EGL_VERSION = 0x3054
EGL_PLATFORM_DEVICE_EXT = 0x313F

egl = ctypes.CDLL("libEGL.so.1")
egl.eglGetProcAddress.restype = ctypes.c_void_p
egl.eglGetProcAddress.argtypes = [ctypes.c_char_p]
egl.eglInitialize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
egl.eglQueryString.restype = ctypes.c_char_p
egl.eglQueryString.argtypes = [ctypes.c_void_p, ctypes.c_int]


def proc(name, restype, *args):
    addr = egl.eglGetProcAddress(name)
    if not addr:
        print(f"EGL FAIL: no {name.decode()}")
        sys.exit(0)
    return ctypes.CFUNCTYPE(restype, *args)(addr)


query_devices = proc(b"eglQueryDevicesEXT", ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int))
platform_display = proc(b"eglGetPlatformDisplayEXT", ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
devices = (ctypes.c_void_p * 16)()
n = ctypes.c_int()
if not query_devices(16, devices, ctypes.byref(n)) or n.value == 0:
    print("EGL FAIL: no EGL devices")
    sys.exit(0)
print(f"EGL devices: {n.value}")
display = platform_display(EGL_PLATFORM_DEVICE_EXT, devices[0], None)
major, minor = ctypes.c_int(), ctypes.c_int()
if not display or not egl.eglInitialize(display, ctypes.byref(major), ctypes.byref(minor)):
    print("EGL FAIL: eglInitialize on device 0")
    sys.exit(0)
print(f"EGL VENDOR {egl.eglQueryString(display, EGL_VENDOR).decode()} version {egl.eglQueryString(display, EGL_VERSION).decode()}")
