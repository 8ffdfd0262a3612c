//! The recurrent product: a vector times a matrix, accumulated. This is where a step spends
//! its time. Weights are packed once into panels of 64 columns stored contiguously
//! ([`Packed`]), so the product streams through memory in order (a row-major matrix whose
//! rows are a power of two apart in bytes would thrash the L1 cache's sets). On x86-64 with
//! AVX2 + FMA (chosen at run time) a panel's 64 outputs stay in eight registers for the whole
//! reduction, one load per multiply-add, with the panel prefetched a few rows ahead; with
//! AVX-512 two panels' outputs in eight 16-lane registers; on aarch64 one panel in sixteen
//! NEON registers; elsewhere a plain loop the compiler vectorises. The input projections
//! (many rows at once) take register-blocked kernels: AVX2, or AVX-512 where the CPU has it,
//! or NEON.

use ndarray::ArrayView2;

/// Columns per panel of a [`Packed`] matrix: eight AVX registers of eight lanes.
const PANEL: usize = 64;

/// How many rows ahead of the one it multiplies the vector product prefetches a panel.
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 4;

/// A `[rows, cols]` matrix stored as panels of 64 columns, each panel row-major and
/// contiguous (the last panel may be narrower).
#[derive(Debug, Clone)]
pub struct Packed {
    rows: usize,
    cols: usize,
    /// The panels, one after another, from a cache-line boundary: a full panel's rows are
    /// then whole cache lines, and no vector load straddles two.
    lines: Vec<CacheLine>,
}

/// 64 bytes of weights on a 64-byte boundary.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine([f32; 16]);

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
        let lines = data
            .chunks(16)
            .map(|chunk| {
                let mut line = [0.0; 16];
                line[..chunk.len()].copy_from_slice(chunk);
                CacheLine(line)
            })
            .collect();
        Packed { rows, cols, lines }
    }

    /// The panels' weights, `rows * cols` floats.
    fn data(&self) -> &[f32] {
        // SAFETY: `CacheLine` is `repr(C)` around 16 floats, so the lines are
        // `16 * lines.len() >= rows * cols` contiguous, initialised floats.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.rows * self.cols)
        }
    }

    /// Where panel `p`'s weights start (every panel before it is whole): the SIMD vector
    /// products walk a panel's rows from here, `width` floats apart.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn panel_weights(&self, p: usize) -> *const f32 {
        self.data()[p * PANEL * self.rows..].as_ptr()
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
    matvec_packed_ordered(out, v, m, false)
}

/// [`matvec_packed`] with the panels taken last to first when `backwards`. The result is the
/// same bit for bit (each panel's columns are computed on their own, in the same order); what
/// changes is which panels are still in the L1 cache. A recurrent loop that multiplies by the
/// same matrix every step and alternates the direction finds the panels it read last at the
/// start of the next step: for a 64 KiB matrix and a 32 KiB L1, about half of the matrix is
/// read from L1 instead of L2.
pub fn matvec_packed_ordered(out: &mut [f32], v: &[f32], m: &Packed, backwards: bool) {
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
        if super::avx512() {
            // SAFETY: the CPU supports the features the function is compiled for, and the
            // sizes were checked above.
            unsafe { avx512::matvec_packed(out, v, m, backwards) };
            return;
        }
        if super::avx2_fma() {
            // SAFETY: as above.
            unsafe { avx2::matvec_packed(out, v, m, backwards) };
            return;
        }
    }
    // SAFETY: NEON is part of aarch64; the sizes were checked above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        neon::matvec_packed(out, v, m, backwards)
    };
    #[cfg(not(target_arch = "aarch64"))]
    packed_generic(out, v, m);
}

/// `out[j] = init[j] + Σ_t Σ_k v_t[k] · m_t[k, j]`: a streamed step's gates from its bias,
/// its input's product and its state's product (`[(x, W), (h, R)]`). The same bits as
/// copying `init` into `out` and taking one [`matvec_packed_ordered`] per term in order; with
/// AVX-512 or NEON the sums stay in registers from one matrix to the next, so the gates are
/// written once instead of being copied, stored and read back between the products (AVX2
/// copies, then multiplies). Every term's matrix has `out.len()` columns and its vector's
/// length in rows.
pub fn matvec_sum_packed_ordered(
    out: &mut [f32],
    init: &[f32],
    terms: &[(&[f32], &Packed)],
    backwards: bool,
) {
    assert!(
        init.len() == out.len()
            && terms
                .iter()
                .all(|(v, m)| m.cols == out.len() && v.len() == m.rows),
        "matvec_sum: output of {}, start of {}, terms {:?}",
        out.len(),
        init.len(),
        terms
            .iter()
            .map(|(v, m)| (v.len(), m.rows, m.cols))
            .collect::<Vec<_>>()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() && !terms.is_empty() {
            // SAFETY: the CPU supports the features the function is compiled for, and the
            // sizes were checked above.
            unsafe { avx512::matvec_sum(out.as_mut_ptr(), init.as_ptr(), terms, backwards) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if !terms.is_empty() {
            // SAFETY: NEON is part of aarch64; the sizes were checked above.
            unsafe { neon::matvec_sum(out.as_mut_ptr(), init.as_ptr(), terms, backwards) };
            return;
        }
    }
    out.copy_from_slice(init);
    for (v, m) in terms {
        matvec_packed_ordered(out, v, m, backwards);
    }
}

/// Whether [`matmul_packed`] has a kernel on this CPU.
pub fn has_blocked_matmul() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::avx2_fma()
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// `out[r, j] += Σ_k x[r, k] · m[k, j]` for every row `r` of `x` (`[rows, m.rows()]`, `out`
/// `[rows, m.cols()]`), when the CPU has a kernel for it (x86-64 with AVX2 + FMA: blocks of
/// 6 rows x 16 columns held in registers, each weight load feeding six multiply-adds; with
/// AVX-512, blocks of 6 rows x a whole 64-column panel, twice the multiply-adds per
/// instruction; aarch64: 6 rows x 16 columns in NEON registers). All sum each output over
/// `k` in order with one fused multiply-add per term, so they give the same bits.
/// Returns whether it ran; the caller falls back to a general matrix product otherwise.
pub fn matmul_packed(out: &mut [f32], x: &[f32], m: &Packed) -> bool {
    matmul_packed_strided(out, m.cols, x, m)
}

/// `out[r*ldo + j] = bias[j] + Σ_k x[r, k] · m[k, j]`: [`matmul_packed_strided`] with each
/// output starting from the bias instead of from what `out` held (the same bits as writing the
/// bias into every row first, without writing and reading back a bias row per input row). An
/// input projection's form; `ldo == m.cols()` for rows that lie together, more to write one
/// sequence's steps between the other sequences' (time-major rows from a batch-major input).
pub fn matmul_packed_onto_bias(
    out: &mut [f32],
    ldo: usize,
    x: &[f32],
    m: &Packed,
    bias: &[f32],
) -> bool {
    assert_eq!(
        bias.len(),
        m.cols,
        "matmul: bias of {} for {} columns",
        bias.len(),
        m.cols
    );
    product(out, ldo, x, m, bias.as_ptr())
}

/// [`matmul_packed`] into rows of `out` that lie `ldo` floats apart (`ldo >= m.cols()`): the
/// product of each row of `x` goes to `out[r*ldo .. r*ldo + m.cols()]`, the floats between
/// rows are left alone. A batched step writes its gates' products in place this way.
pub fn matmul_packed_strided(out: &mut [f32], ldo: usize, x: &[f32], m: &Packed) -> bool {
    product(out, ldo, x, m, std::ptr::null())
}

/// The blocked products' common entry: accumulates into `out`, or with a non-null `bias`
/// (`m.cols` floats) starts every row from it.
fn product(out: &mut [f32], ldo: usize, x: &[f32], m: &Packed, bias: *const f32) -> bool {
    let rows = x.len().checked_div(m.rows).unwrap_or(0);
    assert!(
        x.len() == rows * m.rows
            && ldo >= m.cols
            && out.len() == rows.checked_sub(1).map_or(0, |last| last * ldo + m.cols),
        "matmul: {} x {} matrix, input of {}, output of {} with rows {} apart",
        m.rows,
        m.cols,
        x.len(),
        out.len(),
        ldo
    );
    if m.rows == 0 || !has_blocked_matmul() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx512() {
            // SAFETY: the CPU supports the features the function is compiled for, and the
            // sizes were checked at the top.
            unsafe { avx512::matmul_packed(out, ldo, x, rows, m, bias) };
        } else {
            // SAFETY: as above (AVX2 + FMA checked by `has_blocked_matmul`).
            unsafe { avx2::matmul_packed(out, ldo, x, rows, m, bias) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of aarch64; the sizes were checked at the top.
        unsafe { neon::matmul_packed(out, ldo, x, rows, m, bias) };
    }
    true
}

#[cfg(any(test, not(target_arch = "aarch64")))]
fn packed_generic(out: &mut [f32], v: &[f32], m: &Packed) {
    let mut at = 0;
    for start in (0..m.cols).step_by(PANEL) {
        let width = (m.cols - start).min(PANEL);
        let out = &mut out[start..start + width];
        for &vk in v {
            for (o, &w) in out.iter_mut().zip(&m.data()[at..at + width]) {
                *o += vk * w;
            }
            at += width;
        }
    }
}

/// The panels of `m`, first to last or (with `backwards`) last to first: each one's first
/// column, width, and weights. The walk the SIMD vector products share.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn panels(m: &Packed, backwards: bool) -> impl Iterator<Item = (usize, usize, &[f32])> {
    let count = m.cols.div_ceil(PANEL);
    (0..count).map(move |i| {
        let start = PANEL * if backwards { count - 1 - i } else { i };
        let width = (m.cols - start).min(PANEL);
        // Every panel before this one is PANEL columns wide.
        (
            start,
            width,
            &m.data()[start * m.rows..(start + width) * m.rows],
        )
    })
}

/// A blocked product's last columns of a panel, `from..width`, one at a time for every row
/// of `x` (`k` wide), starting from `out` or, when `bias` is not null, from the bias.
///
/// Safety: the sizes of [`matmul_packed_strided`]; `panel` the weights of the panel starting
/// at column `start`, `width` wide; `bias` null or `m.cols` floats.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tail_columns(
    out: &mut [f32],
    ldo: usize,
    x: &[f32],
    k: usize,
    start: usize,
    panel: *const f32,
    width: usize,
    from: usize,
    bias: *const f32,
) {
    for j in from..width {
        for (r, xr) in x.chunks_exact(k).enumerate() {
            let o = &mut out[r * ldo + start + j];
            if !bias.is_null() {
                *o = *bias.add(start + j);
            }
            fused_column(o, xr, panel, width, j);
        }
    }
}

/// `p + at` floats, or null when `p` is null (a blocked product's "no bias").
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn offset(p: *const f32, at: usize) -> *const f32 {
    if p.is_null() {
        p
    } else {
        p.wrapping_add(at)
    }
}

/// Column `j` of a panel `width` wide: `*o += Σ_k v[k] · panel[k*width + j]`, one fused
/// multiply-add per term in order, as the SIMD lanes compute it: the SIMD kernels' last
/// columns.
///
/// Safety: `o` valid, `panel` holding `v.len()` rows of `width` floats, `j < width`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
unsafe fn fused_column(o: *mut f32, v: &[f32], panel: *const f32, width: usize, j: usize) {
    let mut acc = *o;
    for (k, &vk) in v.iter().enumerate() {
        acc = vk.mul_add(*panel.add(k * width + j), acc);
    }
    *o = acc;
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

    use super::{Packed, PANEL, PREFETCH_ROWS};

    /// Caller guarantees AVX2 + FMA, `out.len() == m.cols` and `v.len() == m.rows`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matvec_packed(out: &mut [f32], v: &[f32], m: &Packed, backwards: bool) {
        for (start, width, panel) in super::panels(m, backwards) {
            let (o, panel) = (out.as_mut_ptr().add(start), panel.as_ptr());
            if width == PANEL {
                panel_band::<8>(o, v, panel, PANEL);
            } else {
                let mut j = 0;
                while j + 8 <= width {
                    panel_band::<1>(o.add(j), v, panel.add(j), width);
                    j += 8;
                }
                for jj in j..width {
                    super::fused_column(o.add(jj), v, panel, width, jj);
                }
            }
        }
    }

    /// Caller guarantees AVX2 + FMA and the sizes of [`super::matmul_packed_strided`]; `bias`
    /// null (accumulate into `out`) or `m.cols` floats to start each row from.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matmul_packed(
        out: &mut [f32],
        ldo: usize,
        x: &[f32],
        rows: usize,
        m: &Packed,
        bias: *const f32,
    ) {
        let (k, n) = (m.rows, m.cols);
        let mut panel = m.data().as_ptr();
        for start in (0..n).step_by(PANEL) {
            let width = (n - start).min(PANEL);
            panel_product(out, ldo, x, rows, m, start, panel, width, bias);
            panel = panel.add(width * k);
        }
    }

    /// The columns of one panel (`start`, `width` wide, its weights at `panel`) for every
    /// row of `x`, from `out` or (non-null) from `bias`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel_product(
        out: &mut [f32],
        ldo: usize,
        x: &[f32],
        rows: usize,
        m: &Packed,
        start: usize,
        panel: *const f32,
        width: usize,
        bias: *const f32,
    ) {
        let k = m.rows;
        let at = |col: usize| super::offset(bias, col);
        let mut j = 0;
        while j + 16 <= width {
            let init = at(start + j);
            row_blocks::<2>(out, x, rows, k, ldo, start + j, panel.add(j), width, init);
            j += 16;
        }
        if j + 8 <= width {
            let init = at(start + j);
            row_blocks::<1>(out, x, rows, k, ldo, start + j, panel.add(j), width, init);
            j += 8;
        }
        super::tail_columns(out, ldo, x, k, start, panel, width, j, bias);
    }

    /// Every row of `x` against `8*C` columns (`col` in `out`, `w` in the panel, starting from
    /// `init` when not null): six rows at a time, then the rest.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn row_blocks<const C: usize>(
        out: &mut [f32],
        x: &[f32],
        rows: usize,
        k: usize,
        n: usize,
        col: usize,
        w: *const f32,
        stride: usize,
        init: *const f32,
    ) {
        let o = out.as_mut_ptr();
        let xp = x.as_ptr();
        let mut r = 0;
        while r + 6 <= rows {
            block::<6, C>(o.add(r * n + col), n, xp.add(r * k), k, w, stride, init);
            r += 6;
        }
        while r < rows {
            block::<1, C>(o.add(r * n + col), n, xp.add(r * k), k, w, stride, init);
            r += 1;
        }
    }

    /// `R` rows x `8*C` columns: `o[r*n + c] = s[r*n + c] + Σ_kk x[r*k + kk] · w[kk*stride + c]`,
    /// `s` being `o` itself, or every row of `init` when that is not null.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block<const R: usize, const C: usize>(
        o: *mut f32,
        n: usize,
        x: *const f32,
        k: usize,
        w: *const f32,
        stride: usize,
        init: *const f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            let from = if init.is_null() { o.add(r * n) } else { init };
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(from.add(8 * c));
            }
        }
        for kk in 0..k {
            let mut wv = [_mm256_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(w.add(kk * stride + 8 * c));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xb = _mm256_set1_ps(*x.add(r * k + kk));
                for (a, &v) in row.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(xb, v, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                _mm256_storeu_ps(o.add(r * n + 8 * c), *a);
            }
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
            if R == 8 && v.len() > 2 * PREFETCH_ROWS {
                // The row PREFETCH_ROWS ahead, one cache line per 16 floats: the weights come
                // from L2 on most steps, and the hardware prefetchers alone leave the loads
                // waiting (a 64x256 product 0.92 -> 0.75 us on the Xeon of 2026-12-03).
                // Prefetching past the panel's end is harmless: it never faults.
                let ahead = row.wrapping_add(PREFETCH_ROWS * stride);
                for line in 0..R / 2 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * line) as *const i8);
                }
            }
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Packed, PANEL};

    /// Rows of `x` per register block: 6 x 4 accumulators of 16 lanes, 4 weight registers.
    const ROWS: usize = 6;

    /// [`super::avx2::matmul_packed`] with each panel in 512-bit registers, a partial panel's
    /// last one masked to the columns that exist. Caller guarantees AVX-512F, AVX2 + FMA and
    /// the sizes of [`super::matmul_packed_strided`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn matmul_packed(
        out: &mut [f32],
        ldo: usize,
        x: &[f32],
        rows: usize,
        m: &Packed,
        bias: *const f32,
    ) {
        let (k, n) = (m.rows, m.cols);
        let (mut panel, xp) = (m.data().as_ptr(), x.as_ptr());
        for start in (0..n).step_by(PANEL) {
            let width = (n - start).min(PANEL);
            let o = out.as_mut_ptr().add(start);
            let init = super::offset(bias, start);
            match width.div_ceil(16) {
                1 => panel_rows::<1>(o, ldo, xp, rows, k, panel, init, width),
                2 => panel_rows::<2>(o, ldo, xp, rows, k, panel, init, width),
                3 => panel_rows::<3>(o, ldo, xp, rows, k, panel, init, width),
                _ => panel_rows::<4>(o, ldo, xp, rows, k, panel, init, width),
            }
            panel = panel.add(width * k);
        }
    }

    /// [`super::matvec_packed_ordered`] with whole panels in 512-bit registers: see
    /// [`matvec_sum`], the one-term case of it. Caller guarantees AVX-512F, AVX2 + FMA,
    /// `out.len() == m.cols` and `v.len() == m.rows`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn matvec_packed(out: &mut [f32], v: &[f32], m: &Packed, backwards: bool) {
        let o = out.as_mut_ptr();
        matvec_sum(o, o, &[(v, m)], backwards);
    }

    /// `o[j] = init[j] + Σ_t Σ_k v_t[k] · m_t[k, j]` over the terms in order, in one pass
    /// per pair of panels: two whole panels per pass (eight independent sums of 16 lanes
    /// keep both FMA units busy where one panel's four would wait on each other's latency),
    /// then a last whole panel alone and a partial one, its last register masked. Each
    /// output is summed from `init` over each term's k in order, one FMA per term, as in
    /// every other tier: the same bits as copying `init` and taking one product per term.
    /// With several terms (a streamed step's input and recurrent products) the sums stay in
    /// registers from one matrix to the next. `init` may be `o` itself. No software
    /// prefetch: the weights are whole aligned cache lines read in order, and the hardware
    /// prefetchers keep up with 16-lane loads where explicit prefetches only added work (the
    /// four products of a streamed step: median 2.05 us without them, 2.54 us with).
    ///
    /// Safety: AVX-512F, AVX2 + FMA; every term's matrix has the same `cols`, its vector
    /// `rows` floats; `o` and `init` point to `cols` floats.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn matvec_sum(
        o: *mut f32,
        init: *const f32,
        terms: &[(&[f32], &Packed)],
        backwards: bool,
    ) {
        let cols = terms[0].1.cols;
        let whole = cols / PANEL;
        let partial = cols % PANEL;
        // The passes in forward order: pairs of whole panels, a last whole one, the partial.
        let pairs = whole / 2;
        let passes = pairs + whole % 2 + usize::from(partial > 0);
        for i in 0..passes {
            let pass = if backwards { passes - 1 - i } else { i };
            if pass < pairs {
                let (first, second) = if backwards {
                    (2 * pass + 1, 2 * pass)
                } else {
                    (2 * pass, 2 * pass + 1)
                };
                two_panels(o, init, terms, first, second);
            } else if pass == pairs && whole % 2 == 1 {
                one_panel::<4>(o, init, terms, whole - 1, PANEL);
            } else {
                let (p, width) = (whole, partial);
                match partial.div_ceil(16) {
                    1 => one_panel::<1>(o, init, terms, p, width),
                    2 => one_panel::<2>(o, init, terms, p, width),
                    3 => one_panel::<3>(o, init, terms, p, width),
                    _ => one_panel::<4>(o, init, terms, p, width),
                }
            }
        }
    }

    /// The lane masks of a panel `width` columns wide held in `N` registers of 16 lanes
    /// (`16 * (N - 1) < width <= 16 * N`): every lane of all but the last, and of the last
    /// the columns that exist.
    #[inline(always)]
    fn register_masks<const N: usize>(width: usize) -> [__mmask16; N] {
        let last = match width % 16 {
            0 => 0xffff,
            rest => (1u16 << rest) - 1,
        };
        std::array::from_fn(|c| if c + 1 == N { last } else { 0xffff })
    }

    /// Panel `p`'s outputs (`width` columns from `p * PANEL`, rows `width` floats apart,
    /// `16 * (N - 1) < width <= 16 * N`): `N` sums of 16 lanes, the last one masked to the
    /// columns that exist (masked lanes are neither loaded, so never fault, nor stored). A
    /// whole panel is `N = 4`, `width = PANEL`; a GRU(32)'s h gate or an RNN(32) is a
    /// partial one of 32 columns.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn one_panel<const N: usize>(
        o: *mut f32,
        init: *const f32,
        terms: &[(&[f32], &Packed)],
        p: usize,
        width: usize,
    ) {
        let mask = register_masks::<N>(width);
        let (o, init) = (o.add(p * PANEL), init.add(p * PANEL));
        let mut acc = [_mm512_setzero_ps(); N];
        for (c, a) in acc.iter_mut().enumerate() {
            *a = _mm512_maskz_loadu_ps(mask[c], init.add(16 * c));
        }
        for &(v, m) in terms {
            let mut row = m.panel_weights(p);
            for &vk in v {
                let s = _mm512_set1_ps(vk);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(s, _mm512_maskz_loadu_ps(mask[c], row.add(16 * c)), *a);
                }
                row = row.add(width);
            }
        }
        for (c, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(o.add(16 * c), mask[c], *a);
        }
    }

    /// Whole panels `pa` and `pb`'s outputs in one pass over each term: eight sums in flight.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn two_panels(
        o: *mut f32,
        init: *const f32,
        terms: &[(&[f32], &Packed)],
        pa: usize,
        pb: usize,
    ) {
        const C: usize = PANEL / 16;
        let (oa, ob) = (o.add(pa * PANEL), o.add(pb * PANEL));
        let (ia, ib) = (init.add(pa * PANEL), init.add(pb * PANEL));
        let (mut acc_a, mut acc_b) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
        for c in 0..C {
            acc_a[c] = _mm512_loadu_ps(ia.add(16 * c));
            acc_b[c] = _mm512_loadu_ps(ib.add(16 * c));
        }
        for &(v, m) in terms {
            let (mut row_a, mut row_b) = (m.panel_weights(pa), m.panel_weights(pb));
            for &vk in v {
                let s = _mm512_set1_ps(vk);
                for c in 0..C {
                    acc_a[c] = _mm512_fmadd_ps(s, _mm512_loadu_ps(row_a.add(16 * c)), acc_a[c]);
                    acc_b[c] = _mm512_fmadd_ps(s, _mm512_loadu_ps(row_b.add(16 * c)), acc_b[c]);
                }
                row_a = row_a.add(PANEL);
                row_b = row_b.add(PANEL);
            }
        }
        for c in 0..C {
            _mm512_storeu_ps(oa.add(16 * c), acc_a[c]);
            _mm512_storeu_ps(ob.add(16 * c), acc_b[c]);
        }
    }

    /// Every row of `x` (`rows` of `k`) times one panel `width` columns wide at `w`
    /// (`16 * (N - 1) < width <= 16 * N`), `ROWS` rows at a time, then one at a time, into
    /// rows `ldo` apart from `o`, the panel's first output column; `init` null or the
    /// panel's bias.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel_rows<const N: usize>(
        o: *mut f32,
        ldo: usize,
        x: *const f32,
        rows: usize,
        k: usize,
        w: *const f32,
        init: *const f32,
        width: usize,
    ) {
        let mut r = 0;
        while r + ROWS <= rows {
            block::<ROWS, N>(o.add(r * ldo), ldo, x.add(r * k), k, w, init, width);
            r += ROWS;
        }
        while r < rows {
            block::<1, N>(o.add(r * ldo), ldo, x.add(r * k), k, w, init, width);
            r += 1;
        }
    }

    /// `R` rows x one panel of `width` columns in `N` registers of 16 lanes, the last masked
    /// to the columns that exist (a whole panel: `N = 4`, `width = PANEL`):
    /// `o[r*n + c] = s[r*n + c] + Σ_kk x[r*k + kk] · w[kk*width + c]`, `s` being `o` itself,
    /// or every row of `init` when that is not null.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize, const N: usize>(
        o: *mut f32,
        n: usize,
        x: *const f32,
        k: usize,
        w: *const f32,
        init: *const f32,
        width: usize,
    ) {
        let mask = register_masks::<N>(width);
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            let from = if init.is_null() { o.add(r * n) } else { init };
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm512_maskz_loadu_ps(mask[c], from.add(16 * c));
            }
        }
        for kk in 0..k {
            let mut wv = [_mm512_setzero_ps(); N];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(mask[c], w.add(kk * width + 16 * c));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*x.add(r * k + kk));
                for (a, &v) in row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xb, v, *a);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(o.add(r * n + 16 * c), mask[c], *a);
            }
        }
    }
}

/// The same products on aarch64 with NEON (always there on aarch64, so chosen at compile
/// time): a whole 64-column panel in sixteen 4-lane registers for the vector product, blocks
/// of 6 rows x 16 columns for the input projections. Every output is summed over k in order
/// with one fused multiply-add per term, partial panels and tails included, so these give the
/// same bits as `f32::mul_add` in that order (a test checks it), and the same bits as the
/// x86-64 blocked kernels on their full panels.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{Packed, PANEL};

    /// Rows of `x` per register block: 6 x 4 accumulators, 4 weight registers.
    const ROWS: usize = 6;

    /// Caller guarantees `out.len() == m.cols` and `v.len() == m.rows`.
    pub unsafe fn matvec_packed(out: &mut [f32], v: &[f32], m: &Packed, backwards: bool) {
        let o = out.as_mut_ptr();
        matvec_sum(o, o, &[(v, m)], backwards);
    }

    /// `o[j] = init[j] + Σ_t Σ_k v_t[k] · m_t[k, j]` over the terms in order, one panel at a
    /// time in sixteen registers of four lanes that stay put from one term's matrix to the
    /// next (a streamed step's input and recurrent products); a partial panel four columns
    /// at a time, then column by column. Each output summed from `init` with one FMA per
    /// term in order: the bits of every other tier. `init` may be `o` itself.
    ///
    /// Safety: every term's matrix has the same `cols`, its vector `rows` floats; `o` and
    /// `init` point to `cols` floats.
    pub unsafe fn matvec_sum(
        o: *mut f32,
        init: *const f32,
        terms: &[(&[f32], &Packed)],
        backwards: bool,
    ) {
        for (start, width, _) in super::panels(terms[0].1, backwards) {
            let (o, init) = (o.add(start), init.add(start));
            let p = start / PANEL;
            if width == PANEL {
                panel_band::<{ PANEL / 4 }>(o, init, terms, p, 0, PANEL);
            } else {
                let mut j = 0;
                while j + 4 <= width {
                    panel_band::<1>(o.add(j), init.add(j), terms, p, j, width);
                    j += 4;
                }
                for jj in j..width {
                    *o.add(jj) = *init.add(jj);
                    for &(v, m) in terms {
                        super::fused_column(o.add(jj), v, m.panel_weights(p), width, jj);
                    }
                }
            }
        }
    }

    /// `4*R` outputs at `o`, from `init`, over every term's panel `p` (rows `stride` floats
    /// apart) from column `j` of the panel.
    #[inline]
    unsafe fn panel_band<const R: usize>(
        o: *mut f32,
        init: *const f32,
        terms: &[(&[f32], &Packed)],
        p: usize,
        j: usize,
        stride: usize,
    ) {
        let mut acc = [vdupq_n_f32(0.0); R];
        for (r, a) in acc.iter_mut().enumerate() {
            *a = vld1q_f32(init.add(4 * r));
        }
        for &(v, m) in terms {
            let mut row = m.panel_weights(p).add(j);
            for &vk in v {
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = vfmaq_n_f32(*a, vld1q_f32(row.add(4 * r)), vk);
                }
                row = row.add(stride);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            vst1q_f32(o.add(4 * r), *a);
        }
    }

    /// Caller guarantees the sizes of [`super::matmul_packed_strided`]; `bias` null
    /// (accumulate into `out`) or `m.cols` floats to start each row from.
    pub unsafe fn matmul_packed(
        out: &mut [f32],
        ldo: usize,
        x: &[f32],
        rows: usize,
        m: &Packed,
        bias: *const f32,
    ) {
        let (k, n) = (m.rows, m.cols);
        let (o, xp) = (out.as_mut_ptr(), x.as_ptr());
        let mut panel = m.data().as_ptr();
        for start in (0..n).step_by(PANEL) {
            let width = (n - start).min(PANEL);
            let mut j = 0;
            while j + 16 <= width {
                let (col, w) = (start + j, panel.add(j));
                let init = super::offset(bias, col);
                let mut r = 0;
                while r + ROWS <= rows {
                    block::<ROWS, 4>(o.add(r * ldo + col), ldo, xp.add(r * k), k, w, width, init);
                    r += ROWS;
                }
                while r < rows {
                    block::<1, 4>(o.add(r * ldo + col), ldo, xp.add(r * k), k, w, width, init);
                    r += 1;
                }
                j += 16;
            }
            while j + 4 <= width {
                let (col, w) = (start + j, panel.add(j));
                let init = super::offset(bias, col);
                for r in 0..rows {
                    block::<1, 1>(o.add(r * ldo + col), ldo, xp.add(r * k), k, w, width, init);
                }
                j += 4;
            }
            super::tail_columns(out, ldo, x, k, start, panel, width, j, bias);
            panel = panel.add(width * k);
        }
    }

    /// `R` rows x `4*C` columns: `o[r*n + c] = s[r*n + c] + Σ_kk x[r*k + kk] · w[kk*stride + c]`,
    /// `s` being `o` itself, or every row of `init` when that is not null.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const C: usize>(
        o: *mut f32,
        n: usize,
        x: *const f32,
        k: usize,
        w: *const f32,
        stride: usize,
        init: *const f32,
    ) {
        let mut acc = [[vdupq_n_f32(0.0); C]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            let from = if init.is_null() { o.add(r * n) } else { init };
            for (c, a) in row.iter_mut().enumerate() {
                *a = vld1q_f32(from.add(4 * c));
            }
        }
        for kk in 0..k {
            let mut wv = [vdupq_n_f32(0.0); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = vld1q_f32(w.add(kk * stride + 4 * c));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xk = *x.add(r * k + kk);
                for (a, &v) in row.iter_mut().zip(&wv) {
                    *a = vfmaq_n_f32(*a, v, xk);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                vst1q_f32(o.add(r * n + 4 * c), *a);
            }
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
        for (rows, cols) in [(1, 1), (8, 256), (64, 192), (20, 60), (13, 131), (5, 200)] {
            let m = ndarray::Array2::from_shape_fn((rows, cols), |_| next());
            let v: Vec<f32> = (0..rows).map(|_| next()).collect();
            let start: Vec<f32> = (0..cols).map(|_| next()).collect();
            let mut fast = start.clone();
            let mut portable = start.clone();
            let mut plain = start.clone();
            let packed = Packed::new(m.view());
            // The blocked product over 1, 7 and 13 rows of x (full and partial row blocks).
            for n_rows in [1usize, 7, 13] {
                let xs: Vec<f32> = (0..n_rows * rows).map(|_| next()).collect();
                let base: Vec<f32> = (0..n_rows * cols).map(|_| next()).collect();
                let mut blocked = base.clone();
                #[cfg(target_arch = "x86_64")]
                if super::super::avx512() {
                    // The 16-lane kernel sums in the 8-lane kernel's order: the same bits.
                    let (mut wide, mut narrow) = (base.clone(), base.clone());
                    // SAFETY: the CPU has the features (checked just above); sizes as built.
                    unsafe {
                        let none = std::ptr::null();
                        avx512::matmul_packed(&mut wide, cols, &xs, n_rows, &packed, none);
                        avx2::matmul_packed(&mut narrow, cols, &xs, n_rows, &packed, none);
                    }
                    assert_eq!(wide, narrow, "{rows}x{cols}, {n_rows} rows");
                }
                if matmul_packed(&mut blocked, &xs, &packed) {
                    for r in 0..n_rows {
                        let mut want = base[r * cols..(r + 1) * cols].to_vec();
                        matvec_generic(
                            &mut want,
                            &xs[r * rows..(r + 1) * rows],
                            m.as_slice().unwrap(),
                            cols,
                            0,
                        );
                        for (a, b) in blocked[r * cols..(r + 1) * cols].iter().zip(&want) {
                            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                        }
                    }
                }
            }
            matvec_packed(&mut fast, &v, &packed);
            let mut backwards = start.clone();
            matvec_packed_ordered(&mut backwards, &v, &packed, true);
            assert_eq!(fast, backwards, "panel order changes no bit");
            packed_generic(&mut portable, &v, &packed);
            matvec_generic(&mut plain, &v, m.as_slice().unwrap(), cols, 0);
            for ((a, p), b) in fast.iter().zip(&portable).zip(&plain) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                assert!((p - b).abs() <= 1e-5 * (1.0 + b.abs()), "{p} vs {b}");
            }
        }
    }

    /// A kernel tier's vector and blocked products, by name.
    type Tier = (
        &'static str,
        unsafe fn(&mut [f32], &[f32], &Packed, bool),
        unsafe fn(&mut [f32], usize, &[f32], usize, &Packed, *const f32),
    );

    /// Every SIMD tier this CPU has: AVX2 + FMA and AVX-512 on x86-64, NEON on aarch64.
    fn simd_tiers() -> Vec<Tier> {
        #[cfg(target_arch = "x86_64")]
        {
            let mut tiers: Vec<Tier> = Vec::new();
            if super::super::avx2_fma() {
                tiers.push(("avx2", avx2::matvec_packed, avx2::matmul_packed));
            }
            if super::super::avx512() {
                tiers.push(("avx512", avx512::matvec_packed, avx512::matmul_packed));
            }
            tiers
        }
        #[cfg(target_arch = "aarch64")]
        {
            let neon: Tier = ("neon", neon::matvec_packed, neon::matmul_packed);
            vec![neon]
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Vec::new()
        }
    }

    /// A sum of products from a start (a streamed step's bias + x·W + h·R) against
    /// `f32::mul_add` from the start over each term's k in order: the same bits, in both panel
    /// orders, for whole, odd, partial and masked panels, with the output's old contents
    /// (NaN) never read; so it equals copying the start and taking one product per term.
    #[test]
    fn sum_of_products_matches_the_fused_loop_bit_for_bit() {
        let mut seed = 5u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (rows_a, rows_b, cols) in [
            (8, 64, 256),
            (3, 5, 192),
            (0, 7, 128),
            (9, 32, 96),
            (6, 4, 60),
            (2, 3, 131),
            (1, 1, 1),
        ] {
            let ma = ndarray::Array2::from_shape_fn((rows_a, cols), |_| next());
            let mb = ndarray::Array2::from_shape_fn((rows_b, cols), |_| next());
            let (pa, pb) = (Packed::new(ma.view()), Packed::new(mb.view()));
            let va: Vec<f32> = (0..rows_a).map(|_| next()).collect();
            let vb: Vec<f32> = (0..rows_b).map(|_| next()).collect();
            let init: Vec<f32> = (0..cols).map(|_| next()).collect();
            let mut want = init.clone();
            for (j, o) in want.iter_mut().enumerate() {
                for (k, &v) in va.iter().enumerate() {
                    *o = v.mul_add(ma[[k, j]], *o);
                }
                for (k, &v) in vb.iter().enumerate() {
                    *o = v.mul_add(mb[[k, j]], *o);
                }
            }
            for backwards in [false, true] {
                let mut out = vec![f32::NAN; cols];
                let terms = [(&va[..], &pa), (&vb[..], &pb)];
                matvec_sum_packed_ordered(&mut out, &init, &terms, backwards);
                assert_eq!(out, want, "{rows_a}+{rows_b}x{cols}, backwards {backwards}");
                let mut one = vec![f32::NAN; cols];
                matvec_sum_packed_ordered(&mut one, &init, &terms[1..], backwards);
                let mut composed = init.clone();
                matvec_packed_ordered(&mut composed, &vb, &pb, backwards);
                assert_eq!(one, composed, "one term: {rows_b}x{cols}");
            }
        }
    }

    /// Every SIMD tier's products against `f32::mul_add` over k in order: the same bits, for
    /// vector products in both panel orders and blocked products over 1, 7 and 13 rows (into
    /// rows a stride apart, and starting from a bias), on full panels, partial panels and
    /// scalar tails. So every tier gives the same bits as every other.
    #[test]
    fn every_simd_tier_matches_the_fused_loop_bit_for_bit() {
        let tiers = simd_tiers();
        eprintln!(
            "SIMD tiers on this CPU: {:?}",
            tiers.iter().map(|t| t.0).collect::<Vec<_>>()
        );
        let mut seed = 23u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (rows, cols) in [
            (1, 1),
            (8, 256),
            (64, 192),
            (20, 60),
            (13, 131),
            (5, 200),
            (3, 70),
            // Partial panels of exactly two and three 16-lane registers.
            (7, 96),
            (4, 112),
        ] {
            let m = ndarray::Array2::from_shape_fn((rows, cols), |_| next());
            let packed = Packed::new(m.view());
            let fused = |out: &mut [f32], v: &[f32]| {
                for (j, o) in out.iter_mut().enumerate() {
                    for (k, &vk) in v.iter().enumerate() {
                        *o = vk.mul_add(m[[k, j]], *o);
                    }
                }
            };
            for n_rows in [1usize, 7, 13] {
                let xs: Vec<f32> = (0..n_rows * rows).map(|_| next()).collect();
                let base: Vec<f32> = (0..n_rows * cols).map(|_| next()).collect();
                let mut want = base.clone();
                for (o, x) in want.chunks_exact_mut(cols).zip(xs.chunks_exact(rows)) {
                    fused(o, x);
                }
                // Every row starting from one bias row instead of from the output.
                let bias: Vec<f32> = (0..cols).map(|_| next()).collect();
                let mut want_biased = bias.repeat(n_rows);
                for (o, x) in want_biased
                    .chunks_exact_mut(cols)
                    .zip(xs.chunks_exact(rows))
                {
                    fused(o, x);
                }
                let none = std::ptr::null();
                for (name, matvec, matmul) in &tiers {
                    let mut blocked = base.clone();
                    // SAFETY: the CPU has the tier's features (`simd_tiers`); sizes as built.
                    unsafe { matmul(&mut blocked, cols, &xs, n_rows, &packed, none) };
                    assert_eq!(blocked, want, "{name}: {rows}x{cols}, {n_rows} rows");
                    // The output's old contents (NaN) must not be read.
                    let mut biased = vec![f32::NAN; n_rows * cols];
                    // SAFETY: as above, and `bias` holds `cols` floats.
                    unsafe { matmul(&mut biased, cols, &xs, n_rows, &packed, bias.as_ptr()) };
                    assert_eq!(biased, want_biased, "{name}: from the bias");
                    // Output rows 3 floats apart more than the width: the gaps keep their
                    // values (NaN here), the rows get the same bits.
                    let ldo = cols + 3;
                    let mut strided = vec![f32::NAN; (n_rows - 1) * ldo + cols];
                    for (r, row) in base.chunks_exact(cols).enumerate() {
                        strided[r * ldo..r * ldo + cols].copy_from_slice(row);
                    }
                    // SAFETY: as above.
                    unsafe { matmul(&mut strided, ldo, &xs, n_rows, &packed, none) };
                    for (r, row) in want.chunks_exact(cols).enumerate() {
                        assert_eq!(&strided[r * ldo..r * ldo + cols], row, "{name}: strided");
                        let gap = &strided[(r * ldo + cols).min(strided.len())..];
                        assert!(gap.iter().take(3).all(|v| v.is_nan()), "{name}: gap");
                    }
                    for backwards in [false, true] {
                        let mut single = base[..cols].to_vec();
                        // SAFETY: as above.
                        unsafe { matvec(&mut single, &xs[..rows], &packed, backwards) };
                        assert_eq!(single, want[..cols], "{name}: {rows}x{cols}, {backwards}");
                    }
                }
            }
        }
    }
}
