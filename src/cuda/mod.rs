//! CUDA and cuDNN, loaded at run time: what the cuDNN backend needs to keep tensors on an
//! NVIDIA GPU and run recurrent layers there (see [`rnn`]).
//!
//! Nothing is linked at build time: the CUDA runtime (`libcudart`) and cuDNN 9 (`libcudnn`)
//! are opened with the dynamic loader when a backend asks for them, so recur builds and runs
//! everywhere, and a machine without them gets one line saying which libraries were looked
//! for. `RECUR_CUDART_LIB` and `RECUR_CUDNN_LIB` name the files when they are not on the
//! loader's path.

pub mod ffi;
pub mod rnn;

use std::ffi::{c_int, c_void, CStr};
use std::sync::Arc;

use crate::error::{RecurError, Result};
use ffi::{Cudart, Cudnn};

/// The CUDA runtime and cuDNN, loaded, with the device the backend runs on and a cuDNN
/// handle created there. Shared (`Arc`) by everything that holds device memory, so the
/// libraries outlive every buffer.
pub struct Gpu {
    /// CUDA runtime entry points.
    pub(crate) rt: Cudart,
    /// cuDNN entry points.
    pub(crate) dnn: Cudnn,
    /// The cuDNN handle (bound to the default stream of `device`).
    pub(crate) handle: ffi::Handle,
    /// The CUDA device index.
    device: c_int,
}

// SAFETY: the handle and the entry points are used by one thread at a time (a backend is
// `Send`, not `Sync`, and every call first makes `device` current on the calling thread).
unsafe impl Send for Gpu {}
// SAFETY: `Gpu` itself holds no mutable state; the handle is only used through `&mut`
// holders (the backends), one thread at a time.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Loads the libraries and opens `device`: a missing library, no such device or a
    /// driver too old is one clear error (exit status 2).
    pub fn open(device: usize) -> Result<Arc<Gpu>> {
        let rt = Cudart::load()?;
        let dnn = Cudnn::load()?;
        let ordinal = c_int::try_from(device)
            .map_err(|_| RecurError::Usage(format!("no CUDA device cuda:{device}")))?;
        let mut count: c_int = 0;
        // SAFETY: cudaGetDeviceCount writes one int.
        let status = unsafe { (rt.get_device_count)(&mut count) };
        if status != 0 {
            return Err(RecurError::Usage(format!(
                "CUDA is not available: {} (libcudart: {})",
                rt.error_string(status),
                rt.path
            )));
        }
        if ordinal >= count {
            return Err(RecurError::Usage(format!(
                "no CUDA device cuda:{device}: this machine has {count}"
            )));
        }
        rt.check("cudaSetDevice", unsafe { (rt.set_device)(ordinal) })?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: cudnnCreate writes the handle on success.
        dnn.check("cudnnCreate", unsafe { (dnn.create)(&mut raw) })?;
        Ok(Arc::new(Gpu {
            rt,
            dnn,
            handle: ffi::Handle(raw),
            device: ordinal,
        }))
    }

    /// Makes this device current on the calling thread (CUDA's current device is per
    /// thread, and a backend may be built on one thread and run on another).
    pub(crate) fn bind(&self) -> Result<()> {
        // SAFETY: plain call.
        self.rt.check("cudaSetDevice", unsafe {
            (self.rt.set_device)(self.device)
        })
    }

    /// `len` floats of uninitialised device memory.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DeviceBuffer> {
        let mut ptr = std::ptr::null_mut();
        let bytes = len.max(1) * 4;
        // SAFETY: cudaMalloc writes the pointer on success.
        self.rt
            .check("cudaMalloc", unsafe { (self.rt.malloc)(&mut ptr, bytes) })?;
        Ok(DeviceBuffer {
            gpu: Arc::clone(self),
            ptr,
            len,
        })
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: the handle was created by cudnnCreate and every buffer (which holds an
        // Arc of this) is gone.
        unsafe { (self.dnn.destroy)(self.handle.0) };
    }
}

/// Floats in device memory, freed on drop.
pub struct DeviceBuffer {
    gpu: Arc<Gpu>,
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: device memory is not tied to a host thread.
unsafe impl Send for DeviceBuffer {}
// SAFETY: `&DeviceBuffer` only reads the pointer; writes go through the CUDA runtime,
// ordered on the default stream.
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// Number of floats.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no floats.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of float `offset`.
    pub(crate) fn at(&self, offset: usize) -> *mut c_void {
        debug_assert!(offset <= self.len);
        // SAFETY: within the allocation (checked by the callers' length checks).
        unsafe { self.ptr.cast::<f32>().add(offset).cast() }
    }

    /// Copies `data` to floats `offset..offset + data.len()`.
    pub fn write(&self, offset: usize, data: &[f32]) -> Result<()> {
        self.range(offset, data.len())?;
        let rt = &self.gpu.rt;
        // SAFETY: the range is inside the allocation; the source is `data.len()` floats.
        rt.check("cudaMemcpy (to the device)", unsafe {
            (rt.memcpy)(
                self.at(offset),
                data.as_ptr().cast(),
                data.len() * 4,
                ffi::MEMCPY_HOST_TO_DEVICE,
            )
        })
    }

    /// Copies floats `offset..offset + out.len()` into `out` (waits for the work queued
    /// before it on the default stream).
    pub fn read(&self, offset: usize, out: &mut [f32]) -> Result<()> {
        self.range(offset, out.len())?;
        let rt = &self.gpu.rt;
        // SAFETY: the range is inside the allocation; the destination holds `out.len()`.
        rt.check("cudaMemcpy (to the host)", unsafe {
            (rt.memcpy)(
                out.as_mut_ptr().cast(),
                self.at(offset),
                out.len() * 4,
                ffi::MEMCPY_DEVICE_TO_HOST,
            )
        })
    }

    /// Copies `len` floats from `source` (at `from`) to floats `offset..` of this buffer.
    pub fn copy_from(
        &self,
        offset: usize,
        source: &DeviceBuffer,
        from: usize,
        len: usize,
    ) -> Result<()> {
        self.range(offset, len)?;
        source.range(from, len)?;
        let rt = &self.gpu.rt;
        // SAFETY: both ranges are inside their allocations.
        rt.check("cudaMemcpy (on the device)", unsafe {
            (rt.memcpy)(
                self.at(offset),
                source.at(from),
                len * 4,
                ffi::MEMCPY_DEVICE_TO_DEVICE,
            )
        })
    }

    /// Sets floats `offset..offset + len` to zero.
    pub fn zero(&self, offset: usize, len: usize) -> Result<()> {
        self.range(offset, len)?;
        let rt = &self.gpu.rt;
        // SAFETY: the range is inside the allocation.
        rt.check("cudaMemset", unsafe {
            (rt.memset)(self.at(offset), 0, len * 4)
        })
    }

    fn range(&self, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(RecurError::Usage(format!(
                "device copy of {len} floats at {offset} outside a buffer of {}",
                self.len
            )));
        }
        Ok(())
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated by cudaMalloc in `Gpu::alloc`, freed once.
        unsafe { (self.gpu.rt.free)(self.ptr) };
    }
}

/// Reads a C string the CUDA libraries return (static storage).
fn c_text(ptr: *const std::ffi::c_char) -> String {
    if ptr.is_null() {
        return "(no message)".into();
    }
    // SAFETY: the libraries return NUL-terminated static strings.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}
