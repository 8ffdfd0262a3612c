//! The recurrent product: a vector times a row-major matrix, accumulated. This is where a
//! step spends its time, so the loops are written to vectorise, and compiled a second time
//! for AVX2 + FMA, chosen at run time on x86-64.

/// `out[j] += Σ_k v[k] · m[k*width + j]` for `j < out.len()` (`width == out.len()`).
pub fn matvec_acc(out: &mut [f32], v: &[f32], m: &[f32], width: usize) {
    matvec_acc_strided(out, v, m, width, 0);
}

/// `out[j] += Σ_k v[k] · m[k*width + offset + j]`: the same on a band of columns.
pub fn matvec_acc_strided(out: &mut [f32], v: &[f32], m: &[f32], width: usize, offset: usize) {
    debug_assert!(offset + out.len() <= width && m.len() >= v.len() * width);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { matvec_avx2(out, v, m, width, offset) };
            return;
        }
    }
    matvec_generic(out, v, m, width, offset);
}

#[inline(always)]
fn matvec_generic(out: &mut [f32], v: &[f32], m: &[f32], width: usize, offset: usize) {
    let n = out.len();
    for (k, &vk) in v.iter().enumerate() {
        let row = &m[k * width + offset..k * width + offset + n];
        for (o, &w) in out.iter_mut().zip(row) {
            *o += vk * w;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn matvec_avx2(out: &mut [f32], v: &[f32], m: &[f32], width: usize, offset: usize) {
    matvec_generic(out, v, m, width, offset)
}
