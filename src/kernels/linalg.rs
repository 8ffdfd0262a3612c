//! The recurrent product: a vector times a row-major matrix, accumulated. This is where a
//! step spends its time. On x86-64 with AVX2 + FMA (chosen at run time) the output is
//! walked in bands of 64 columns held in eight registers for the whole reduction, so each
//! multiply-add costs one load; elsewhere a plain loop the compiler vectorises.

/// `out[j] += Σ_k v[k] · m[k*width + j]` for `j < out.len()` (`width == out.len()`).
pub fn matvec_acc(out: &mut [f32], v: &[f32], m: &[f32], width: usize) {
    matvec_acc_strided(out, v, m, width, 0);
}

/// `out[j] += Σ_k v[k] · m[k*width + offset + j]`: the same on a band of columns.
pub fn matvec_acc_strided(out: &mut [f32], v: &[f32], m: &[f32], width: usize, offset: usize) {
    assert!(
        offset + out.len() <= width && m.len() >= v.len() * width,
        "matvec: {} columns at {offset} of {width}, matrix of {} for {} rows",
        out.len(),
        m.len(),
        v.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for, and the
            // bounds were checked above.
            unsafe { avx2::matvec(out, v, m, width, offset) };
            return;
        }
    }
    matvec_generic(out, v, m, width, offset);
}

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
mod avx2 {
    use std::arch::x86_64::*;

    /// Caller guarantees AVX2 + FMA, `offset + out.len() <= width` and
    /// `m.len() >= v.len() * width`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matvec(out: &mut [f32], v: &[f32], m: &[f32], width: usize, offset: usize) {
        let n = out.len();
        let mut j = 0;
        while j + 64 <= n {
            band::<8>(out, v, m, width, offset, j);
            j += 64;
        }
        while j + 8 <= n {
            band::<1>(out, v, m, width, offset, j);
            j += 8;
        }
        for jj in j..n {
            let mut acc = out[jj];
            for (k, &vk) in v.iter().enumerate() {
                acc += vk * m[k * width + offset + jj];
            }
            out[jj] = acc;
        }
    }

    /// Columns `j .. j + 8*R` of the product, accumulated in `R` registers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn band<const R: usize>(
        out: &mut [f32],
        v: &[f32],
        m: &[f32],
        width: usize,
        offset: usize,
        j: usize,
    ) {
        let o = out.as_mut_ptr().add(j);
        let mut acc = [_mm256_setzero_ps(); R];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(o.add(8 * r));
        }
        let mut row = m.as_ptr().add(offset + j);
        for &vk in v {
            let s = _mm256_set1_ps(vk);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(s, _mm256_loadu_ps(row.add(8 * r)), *a);
            }
            row = row.add(width);
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * r), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The banded kernel against the plain loop, on widths that exercise every band size
    /// and the scalar tail, with offsets.
    #[test]
    fn banded_product_matches_the_plain_loop() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (rows, width, offset, n) in [
            (3, 5, 0, 5),
            (64, 256, 0, 256),
            (17, 200, 64, 77),
            (1, 72, 8, 64),
        ] {
            let v: Vec<f32> = (0..rows).map(|_| next()).collect();
            let m: Vec<f32> = (0..rows * width).map(|_| next()).collect();
            let start: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut fast = start.clone();
            let mut plain = start.clone();
            matvec_acc_strided(&mut fast, &v, &m, width, offset);
            matvec_generic(&mut plain, &v, &m, width, offset);
            for (a, b) in fast.iter().zip(&plain) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
