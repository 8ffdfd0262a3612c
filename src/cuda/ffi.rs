//! The CUDA runtime and cuDNN entry points recur calls, resolved from the shared libraries
//! at run time, and the enum values of their C headers (`cuda_runtime_api.h`,
//! `cudnn_graph.h`, `cudnn_adv.h`, cuDNN 9) that those calls take.

use std::ffi::{c_char, c_int, c_void};

use libloading::Library;

use crate::error::{RecurError, Result};

/// `cudaMemcpyHostToDevice`.
pub const MEMCPY_HOST_TO_DEVICE: c_int = 1;
/// `cudaMemcpyDeviceToHost`.
pub const MEMCPY_DEVICE_TO_HOST: c_int = 2;
/// `cudaMemcpyDeviceToDevice`.
pub const MEMCPY_DEVICE_TO_DEVICE: c_int = 3;

/// `CUDNN_DATA_FLOAT`.
pub const DATA_FLOAT: c_int = 0;
/// `CUDNN_DEFAULT_MATH`: lets cuDNN use TensorFloat-32 on Ampere and later.
pub const DEFAULT_MATH: c_int = 0;
/// `CUDNN_FMA_MATH`: f32 multiply-adds only.
pub const FMA_MATH: c_int = 3;
/// `CUDNN_RNN_RELU`, `CUDNN_RNN_TANH`, `CUDNN_LSTM`, `CUDNN_GRU`.
pub const RNN_RELU: c_int = 0;
/// See [`RNN_RELU`].
pub const RNN_TANH: c_int = 1;
/// See [`RNN_RELU`].
pub const LSTM: c_int = 2;
/// See [`RNN_RELU`].
pub const GRU: c_int = 3;
/// `CUDNN_RNN_NO_BIAS`.
pub const NO_BIAS: c_int = 0;
/// `CUDNN_RNN_DOUBLE_BIAS`: separate input and recurrent biases, as ONNX's `B`.
pub const DOUBLE_BIAS: c_int = 2;
/// `CUDNN_UNIDIRECTIONAL`.
pub const UNIDIRECTIONAL: c_int = 0;
/// `CUDNN_BIDIRECTIONAL`: both directions, outputs side by side per step.
pub const BIDIRECTIONAL: c_int = 1;
/// `CUDNN_LINEAR_INPUT`.
pub const LINEAR_INPUT: c_int = 0;
/// `CUDNN_RNN_ALGO_STANDARD`.
pub const ALGO_STANDARD: c_int = 0;
/// `CUDNN_RNN_ALGO_PERSIST_STATIC`.
pub const ALGO_PERSIST_STATIC: c_int = 1;
/// `CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H`.
pub const ALGO_PERSIST_STATIC_SMALL_H: c_int = 3;
/// `CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_UNPACKED`.
pub const LAYOUT_SEQ_MAJOR_UNPACKED: c_int = 0;
/// `CUDNN_RNN_DATA_LAYOUT_SEQ_MAJOR_PACKED`.
pub const LAYOUT_SEQ_MAJOR_PACKED: c_int = 1;
/// `CUDNN_RNN_PADDED_IO_DISABLED`.
pub const PADDED_IO_DISABLED: u32 = 0;
/// `CUDNN_RNN_PADDED_IO_ENABLED`: needed by the unpacked layouts.
pub const PADDED_IO_ENABLED: u32 = 1;
/// `CUDNN_FWD_MODE_INFERENCE`.
pub const FWD_MODE_INFERENCE: c_int = 0;

/// An opaque cuDNN object pointer (handle or descriptor).
pub type Opaque = *mut c_void;

/// A cuDNN handle.
pub struct Handle(pub Opaque);

/// The CUDA runtime functions recur uses.
pub struct Cudart {
    _lib: Library,
    /// The file it was loaded from, for messages.
    pub path: String,
    pub(crate) get_device_count: unsafe extern "C" fn(*mut c_int) -> c_int,
    pub(crate) set_device: unsafe extern "C" fn(c_int) -> c_int,
    pub(crate) malloc: unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int,
    pub(crate) free: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub(crate) memcpy: unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int) -> c_int,
    pub(crate) memset: unsafe extern "C" fn(*mut c_void, c_int, usize) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
}

/// The cuDNN functions recur uses.
pub struct Cudnn {
    _lib: Library,
    /// The file it was loaded from, for messages.
    pub path: String,
    pub(crate) create: unsafe extern "C" fn(*mut Opaque) -> c_int,
    pub(crate) destroy: unsafe extern "C" fn(Opaque) -> c_int,
    get_error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    pub(crate) create_rnn_descriptor: unsafe extern "C" fn(*mut Opaque) -> c_int,
    pub(crate) destroy_rnn_descriptor: unsafe extern "C" fn(Opaque) -> c_int,
    #[allow(clippy::type_complexity)]
    pub(crate) set_rnn_descriptor_v8: unsafe extern "C" fn(
        Opaque, // rnnDesc
        c_int,  // algo
        c_int,  // cellMode
        c_int,  // biasMode
        c_int,  // dirMode
        c_int,  // inputMode
        c_int,  // dataType
        c_int,  // mathPrec
        c_int,  // mathType
        i32,    // inputSize
        i32,    // hiddenSize
        i32,    // projSize
        i32,    // numLayers
        Opaque, // dropoutDesc
        u32,    // auxFlags
    ) -> c_int,
    pub(crate) get_rnn_weight_space_size: unsafe extern "C" fn(Opaque, Opaque, *mut usize) -> c_int,
    #[allow(clippy::type_complexity)]
    pub(crate) get_rnn_weight_params: unsafe extern "C" fn(
        Opaque,           // handle
        Opaque,           // rnnDesc
        i32,              // pseudoLayer
        usize,            // weightSpaceSize
        *const c_void,    // weightSpace
        i32,              // linLayerID
        Opaque,           // mDesc
        *mut *mut c_void, // mAddr
        Opaque,           // bDesc
        *mut *mut c_void, // bAddr
    ) -> c_int,
    pub(crate) create_rnn_data_descriptor: unsafe extern "C" fn(*mut Opaque) -> c_int,
    pub(crate) destroy_rnn_data_descriptor: unsafe extern "C" fn(Opaque) -> c_int,
    #[allow(clippy::type_complexity)]
    pub(crate) set_rnn_data_descriptor: unsafe extern "C" fn(
        Opaque,       // rnnDataDesc
        c_int,        // dataType
        c_int,        // layout
        c_int,        // maxSeqLength
        c_int,        // batchSize
        c_int,        // vectorSize
        *const c_int, // seqLengthArray
        *mut c_void,  // paddingFill
    ) -> c_int,
    pub(crate) create_tensor_descriptor: unsafe extern "C" fn(*mut Opaque) -> c_int,
    pub(crate) destroy_tensor_descriptor: unsafe extern "C" fn(Opaque) -> c_int,
    pub(crate) set_tensor_nd_descriptor:
        unsafe extern "C" fn(Opaque, c_int, c_int, *const c_int, *const c_int) -> c_int,
    #[allow(clippy::type_complexity)]
    pub(crate) get_tensor_nd_descriptor: unsafe extern "C" fn(
        Opaque,
        c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
        *mut c_int,
    ) -> c_int,
    #[allow(clippy::type_complexity)]
    pub(crate) get_rnn_temp_space_sizes:
        unsafe extern "C" fn(Opaque, Opaque, c_int, Opaque, *mut usize, *mut usize) -> c_int,
    #[allow(clippy::type_complexity)]
    pub(crate) rnn_forward: unsafe extern "C" fn(
        Opaque,        // handle
        Opaque,        // rnnDesc
        c_int,         // fwdMode
        *const i32,    // devSeqLengths
        Opaque,        // xDesc
        *const c_void, // x
        Opaque,        // yDesc
        *mut c_void,   // y
        Opaque,        // hDesc
        *const c_void, // hx
        *mut c_void,   // hy
        Opaque,        // cDesc
        *const c_void, // cx
        *mut c_void,   // cy
        usize,         // weightSpaceSize
        *const c_void, // weightSpace
        usize,         // workSpaceSize
        *mut c_void,   // workSpace
        usize,         // reserveSpaceSize
        *mut c_void,   // reserveSpace
    ) -> c_int,
}

/// Opens the first library of `candidates` that loads (after `env`, when set): the library
/// and the name it was found by, or one error listing every place looked in.
fn open(env: &str, candidates: &[&str], what: &str) -> Result<(Library, String)> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(path) = std::env::var(env) {
        names.push(path);
    }
    names.extend(candidates.iter().map(|s| s.to_string()));
    let mut tried = Vec::new();
    for name in &names {
        // SAFETY: loading a vendor library runs its initialisers, which is what using it
        // means; recur calls nothing else in it until the symbols resolve.
        match unsafe { Library::new(name) } {
            Ok(lib) => return Ok((lib, name.clone())),
            Err(e) => tried.push(format!(
                "{name} ({})",
                crate::error::one_line(&e.to_string())
            )),
        }
    }
    Err(RecurError::Usage(format!(
        "{what} not found: tried {}; put it on LD_LIBRARY_PATH or name it with {env}",
        tried.join(", ")
    )))
}

/// Resolves `name` in `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's true signature.
unsafe fn symbol<T: Copy>(lib: &Library, path: &str, name: &str) -> Result<T> {
    // SAFETY: the caller vouches for the signature.
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| {
            RecurError::Usage(format!(
                "{path} lacks {name} ({}); recur needs CUDA 12 or 13 and cuDNN 9",
                crate::error::one_line(&e.to_string())
            ))
        })
}

impl Cudart {
    /// Loads the CUDA runtime (`RECUR_CUDART_LIB`, else `libcudart.so.13`, `.12`, `.so`).
    pub fn load() -> Result<Self> {
        let (lib, path) = open(
            "RECUR_CUDART_LIB",
            &["libcudart.so.13", "libcudart.so.12", "libcudart.so"],
            "the CUDA runtime (libcudart)",
        )?;
        // SAFETY: each signature is the one of cuda_runtime_api.h.
        unsafe {
            Ok(Cudart {
                get_device_count: symbol(&lib, &path, "cudaGetDeviceCount")?,
                set_device: symbol(&lib, &path, "cudaSetDevice")?,
                malloc: symbol(&lib, &path, "cudaMalloc")?,
                free: symbol(&lib, &path, "cudaFree")?,
                memcpy: symbol(&lib, &path, "cudaMemcpy")?,
                memset: symbol(&lib, &path, "cudaMemset")?,
                get_error_string: symbol(&lib, &path, "cudaGetErrorString")?,
                _lib: lib,
                path,
            })
        }
    }

    /// The runtime's words for an error code.
    pub fn error_string(&self, status: c_int) -> String {
        // SAFETY: returns a static string for any code.
        super::c_text(unsafe { (self.get_error_string)(status) })
    }

    /// `Ok` for `cudaSuccess`, else an error naming the call.
    pub fn check(&self, call: &str, status: c_int) -> Result<()> {
        checked("CUDA", call, status, || self.error_string(status))
    }
}

impl Cudnn {
    /// Loads cuDNN 9 (`RECUR_CUDNN_LIB`, else `libcudnn.so.9`, `libcudnn.so`).
    pub fn load() -> Result<Self> {
        let (lib, path) = open(
            "RECUR_CUDNN_LIB",
            &["libcudnn.so.9", "libcudnn.so"],
            "cuDNN 9 (libcudnn)",
        )?;
        // SAFETY: each signature is the one of cudnn_graph.h / cudnn_adv.h (cuDNN 9).
        unsafe {
            Ok(Cudnn {
                create: symbol(&lib, &path, "cudnnCreate")?,
                destroy: symbol(&lib, &path, "cudnnDestroy")?,
                get_error_string: symbol(&lib, &path, "cudnnGetErrorString")?,
                create_rnn_descriptor: symbol(&lib, &path, "cudnnCreateRNNDescriptor")?,
                destroy_rnn_descriptor: symbol(&lib, &path, "cudnnDestroyRNNDescriptor")?,
                set_rnn_descriptor_v8: symbol(&lib, &path, "cudnnSetRNNDescriptor_v8")?,
                get_rnn_weight_space_size: symbol(&lib, &path, "cudnnGetRNNWeightSpaceSize")?,
                get_rnn_weight_params: symbol(&lib, &path, "cudnnGetRNNWeightParams")?,
                create_rnn_data_descriptor: symbol(&lib, &path, "cudnnCreateRNNDataDescriptor")?,
                destroy_rnn_data_descriptor: symbol(&lib, &path, "cudnnDestroyRNNDataDescriptor")?,
                set_rnn_data_descriptor: symbol(&lib, &path, "cudnnSetRNNDataDescriptor")?,
                create_tensor_descriptor: symbol(&lib, &path, "cudnnCreateTensorDescriptor")?,
                destroy_tensor_descriptor: symbol(&lib, &path, "cudnnDestroyTensorDescriptor")?,
                set_tensor_nd_descriptor: symbol(&lib, &path, "cudnnSetTensorNdDescriptor")?,
                get_tensor_nd_descriptor: symbol(&lib, &path, "cudnnGetTensorNdDescriptor")?,
                get_rnn_temp_space_sizes: symbol(&lib, &path, "cudnnGetRNNTempSpaceSizes")?,
                rnn_forward: symbol(&lib, &path, "cudnnRNNForward")?,
                _lib: lib,
                path,
            })
        }
    }

    /// cuDNN's words for a status code.
    pub fn error_string(&self, status: c_int) -> String {
        // SAFETY: returns a static string for any code.
        super::c_text(unsafe { (self.get_error_string)(status) })
    }

    /// `Ok` for `CUDNN_STATUS_SUCCESS`, else an error naming the call.
    pub fn check(&self, call: &str, status: c_int) -> Result<()> {
        checked("cuDNN", call, status, || self.error_string(status))
    }
}

/// `Ok` for status 0 (success in both libraries), else one line naming the library, the
/// call, the library's words and the code.
fn checked(library: &str, call: &str, status: c_int, words: impl FnOnce() -> String) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    Err(RecurError::Usage(format!(
        "{library}: {call} failed: {} (status {status})",
        words()
    )))
}
