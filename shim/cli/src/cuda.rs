//! The CUDA driver's checkpoint API (`cuCheckpointProcess*`, driver 550+), loaded from the host
//! driver's libcuda — never from an image — in this short-lived helper process, so that the
//! per-pod shim neither grows by the driver nor shares its faults. Each call names another
//! process by its host PID.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::Path;

use libloading::{Library, Symbol};

/// A process's CUDA checkpoint state (`CUprocessState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Running normally.
    Running,
    /// Locked: CUDA calls block.
    Locked,
    /// Checkpointed: device memory copied to the host and released.
    Checkpointed,
    /// A previous checkpoint or restore failed.
    Failed,
    /// A value this code does not know.
    Other(c_int),
}

type GetStateFn = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;
type OpFn = unsafe extern "C" fn(c_int, *mut c_void) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;
type InitFn = unsafe extern "C" fn(c_uint) -> c_int;

/// `CUcheckpointLockArgs`: a time limit in milliseconds, then reserved fields.
#[repr(C)]
struct LockArgs {
    timeout_ms: c_uint,
    reserved0: c_uint,
    reserved1: [u64; 7],
}

/// The loaded driver.
pub struct Driver {
    lib: Library,
}

impl Driver {
    /// Loads libcuda from `path` (the host driver's) and initialises the driver API.
    pub fn load(path: &Path) -> Result<Self, String> {
        // SAFETY: loading the host driver's libcuda, a library meant to be loaded this way.
        let lib = unsafe { Library::new(path) }
            .map_err(|e| format!("loading {}: {e}", path.display()))?;
        let d = Self { lib };
        // SAFETY: the symbol has this signature in every CUDA driver.
        let init: Symbol<InitFn> =
            unsafe { d.lib.get(b"cuInit\0") }.map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: cuInit(0) is always valid.
        let r = unsafe { init(0) };
        if r != 0 {
            return Err(format!("cuInit: {}", d.error(r)));
        }
        for sym in [
            "cuCheckpointProcessLock",
            "cuCheckpointProcessCheckpoint",
            "cuCheckpointProcessRestore",
            "cuCheckpointProcessUnlock",
            "cuCheckpointProcessGetState",
        ] {
            let name = format!("{sym}\0");
            // SAFETY: only probing that the symbol exists.
            if unsafe { d.lib.get::<*const c_void>(name.as_bytes()) }.is_err() {
                return Err(format!(
                    "{} has no {sym}: the driver predates the checkpoint API (driver 550 or newer is needed)",
                    path.display()
                ));
            }
        }
        Ok(d)
    }

    /// The driver's name for error `code`.
    pub fn error(&self, code: c_int) -> String {
        // SAFETY: signature of cuGetErrorString.
        let Ok(f) = (unsafe { self.lib.get::<ErrorStringFn>(b"cuGetErrorString\0") }) else {
            return format!("CUDA error {code}");
        };
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: out-pointer to a static string owned by the driver.
        let ok = unsafe { f(code, &mut s) } == 0 && !s.is_null();
        if ok {
            // SAFETY: the driver returns a NUL-terminated static string.
            format!(
                "{} ({code})",
                unsafe { CStr::from_ptr(s) }.to_string_lossy()
            )
        } else {
            format!("CUDA error {code}")
        }
    }

    /// `cuCheckpointProcessGetState`.
    pub fn state(&self, pid: i32) -> Result<State, String> {
        // SAFETY: signature of cuCheckpointProcessGetState (checked present at load).
        let f: Symbol<GetStateFn> =
            unsafe { self.lib.get(b"cuCheckpointProcessGetState\0") }.map_err(|e| e.to_string())?;
        let mut s: c_int = -1;
        // SAFETY: out-pointer to an int.
        let r = unsafe { f(pid, &mut s) };
        if r != 0 {
            return Err(self.error(r));
        }
        Ok(match s {
            0 => State::Running,
            1 => State::Locked,
            2 => State::Checkpointed,
            3 => State::Failed,
            v => State::Other(v),
        })
    }

    fn op(&self, sym: &[u8], pid: i32, args: *mut c_void) -> Result<(), String> {
        // SAFETY: every checkpoint operation takes (pid, args*) and returns CUresult.
        let f: Symbol<OpFn> = unsafe { self.lib.get(sym) }.map_err(|e| e.to_string())?;
        // SAFETY: args is null or points to the operation's argument struct.
        let r = unsafe { f(pid, args) };
        if r == 0 {
            Ok(())
        } else {
            Err(self.error(r))
        }
    }

    /// Locks the process's CUDA calls, waiting at most `timeout_ms` for in-flight work.
    pub fn lock(&self, pid: i32, timeout_ms: u32) -> Result<(), String> {
        let mut a = LockArgs {
            timeout_ms,
            reserved0: 0,
            reserved1: [0; 7],
        };
        self.op(
            b"cuCheckpointProcessLock\0",
            pid,
            (&mut a as *mut LockArgs).cast(),
        )
    }

    /// Copies device memory to the host and releases the GPU.
    pub fn checkpoint(&self, pid: i32) -> Result<(), String> {
        self.op(
            b"cuCheckpointProcessCheckpoint\0",
            pid,
            std::ptr::null_mut(),
        )
    }

    /// Reacquires the GPU and copies the memory back.
    pub fn restore(&self, pid: i32) -> Result<(), String> {
        self.op(b"cuCheckpointProcessRestore\0", pid, std::ptr::null_mut())
    }

    /// Lets the process's CUDA calls run again.
    pub fn unlock(&self, pid: i32) -> Result<(), String> {
        self.op(b"cuCheckpointProcessUnlock\0", pid, std::ptr::null_mut())
    }
}
