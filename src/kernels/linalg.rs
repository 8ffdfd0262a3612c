//! The recurrent product: a vector times a matrix, accumulated. This is where a step spends
//! its time. Weights are packed once into panels of 64 columns stored contiguously
//! ([`Packed`]), so the product streams through memory in order (a row-major matrix whose
//! rows are a power of two apart in bytes would thrash the L1 cache's sets). On x86-64 with
//! AVX2 + FMA (chosen at run time) a panel's 64 outputs stay in eight registers for the whole
//! reduction, one load per multiply-add; elsewhere a plain loop the compiler vectorises.

use ndarray::ArrayView2;

/// Columns per panel of a [`Packed`] matrix: eight AVX registers of eight lanes.
const PANEL: usize = 64;

/// A `[rows, cols]` matrix stored as panels of [`PANEL`] columns, each panel row-major and
/// contiguous (the last panel may be narrower).
#[derive(Debug, Clone)]
pub struct Packed {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Packed {
    /// Packs a `[rows, cols]` matrix.
    pub fn new(m: ArrayView2<f32>) -> Self {
        let (rows, cols) = m.dim();
        let mut data = Vec::with_capacity(rows * cols);
        for start in (0..cols).step_by(PANEL) {
            let end = (start + PANEL).min(cols);
            for r in 0..rows {
                data.extend(m.row(r).iter().skip(start).take(end - start));
            }
        }
        Packed { rows, cols, data }
    }

    /// Number of rows (the length of the vector it multiplies).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (the length of the product).
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// `out[j] += Σ_k v[k] · m[k, j]` for the packed `m` (`out.len() == m.cols()`,
/// `v.len() == m.rows()`).
pub fn matvec_packed(out: &mut [f32], v: &[f32], m: &Packed) {
    assert!(
        out.len() == m.cols && v.len() == m.rows,
        "matvec: {} x {} matrix, vector of {}, output of {}",
        m.rows,
        m.cols,
        v.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for, and the
            // sizes were checked above.
            unsafe { avx2::matvec_packed(out, v, m) };
            return;
        }
    }
    packed_generic(out, v, m);
}

fn packed_generic(out: &mut [f32], v: &[f32], m: &Packed) {
    let mut at = 0;
    for start in (0..m.cols).step_by(PANEL) {
        let width = (m.cols - start).min(PANEL);
        let out = &mut out[start..start + width];
        for &vk in v {
            for (o, &w) in out.iter_mut().zip(&m.data[at..at + width]) {
                *o += vk * w;
            }
            at += width;
        }
    }
}

/// The plain product on a row-major matrix: the yardstick of the tests.
#[cfg(test)]
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

    use super::{Packed, PANEL};

    /// Caller guarantees AVX2 + FMA, `out.len() == m.cols` and `v.len() == m.rows`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matvec_packed(out: &mut [f32], v: &[f32], m: &Packed) {
        let mut panel = m.data.as_ptr();
        for start in (0..m.cols).step_by(PANEL) {
            let width = (m.cols - start).min(PANEL);
            let o = out.as_mut_ptr().add(start);
            if width == PANEL {
                panel_band::<8>(o, v, panel, PANEL);
            } else {
                let mut j = 0;
                while j + 8 <= width {
                    panel_band::<1>(o.add(j), v, panel.add(j), width);
                    j += 8;
                }
                for jj in j..width {
                    let mut acc = *o.add(jj);
                    for (k, &vk) in v.iter().enumerate() {
                        acc += vk * *panel.add(k * width + jj);
                    }
                    *o.add(jj) = acc;
                }
            }
            panel = panel.add(width * m.rows);
        }
    }

    /// `8*R` outputs at `o` from rows `stride` floats apart starting at `w`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn panel_band<const R: usize>(o: *mut f32, v: &[f32], w: *const f32, stride: usize) {
        let mut acc = [_mm256_setzero_ps(); R];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm256_loadu_ps(o.add(8 * r));
        }
        let mut row = w;
        for &vk in v {
            let s = _mm256_set1_ps(vk);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(s, _mm256_loadu_ps(row.add(8 * r)), *a);
            }
            row = row.add(stride);
        }
        for (r, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * r), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed product against the plain loop, for widths with full panels, a partial
    /// panel, and a scalar tail.
    #[test]
    fn packed_product_matches_the_plain_loop() {
        let mut seed = 11u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (rows, cols) in [(1, 1), (8, 256), (64, 192), (20, 60), (13, 131)] {
            let m = ndarray::Array2::from_shape_fn((rows, cols), |_| next());
            let v: Vec<f32> = (0..rows).map(|_| next()).collect();
            let start: Vec<f32> = (0..cols).map(|_| next()).collect();
            let mut fast = start.clone();
            let mut portable = start.clone();
            let mut plain = start.clone();
            let packed = Packed::new(m.view());
            matvec_packed(&mut fast, &v, &packed);
            packed_generic(&mut portable, &v, &packed);
            matvec_generic(&mut plain, &v, m.as_slice().unwrap(), cols, 0);
            for ((a, p), b) in fast.iter().zip(&portable).zip(&plain) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                assert!((p - b).abs() <= 1e-5 * (1.0 + b.abs()), "{p} vs {b}");
            }
        }
    }
}
