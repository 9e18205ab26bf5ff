//! `im2col` and `col2im` for one image: convolution as matrix multiplication.
//!
//! `Unfold` turns an image (C, H, W) into columns (C·k·k, H'·W'): row c·k·k + ky·k + kx, column
//! y'·W' + x' holds x[c, y'·s − p + ky, x'·s − p + kx], or 0 in the padding. A k×k conv is then
//! the weight (Cout, C·k·k) times the columns. `fold` is its adjoint: it adds columns back
//! into an image, summing overlapping taps, which gives the input gradient.

use super::Float;

/// The geometry of a k×k convolution with stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

impl Window {
    /// Output side for an input side of `n`.
    pub fn out(&self, n: usize) -> usize {
        (n + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }

    /// True when the columns are the image itself (1×1, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }
}

/// Calls `f(row, first column, first input offset, count)` for every run of in-bounds taps of
/// one channel plane: tap j of a run reads input `offset + j·stride` into column `column + j`.
#[inline]
fn for_each_run(w: Window, h: usize, wd: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
    let (ho, wo) = (w.out(h), w.out(wd));
    let (s, p) = (w.stride as isize, w.padding as isize);
    for ky in 0..w.kernel {
        for kx in 0..w.kernel {
            let row = ky * w.kernel + kx;
            // Output columns whose input column ox·s + kx − p lies in [0, wd).
            let first = ((p - kx as isize).max(0) + s - 1) / s;
            let last = ((wd as isize - 1 + p - kx as isize).div_euclid(s)).min(wo as isize - 1);
            if last < first {
                continue;
            }
            let count = (last - first + 1) as usize;
            let ix0 = (first * s + kx as isize - p) as usize;
            for oy in 0..ho {
                let iy = (oy * w.stride + ky) as isize - p;
                if iy >= 0 && iy < h as isize {
                    f(row, oy * wo + first as usize, iy as usize * wd + ix0, count);
                }
            }
        }
    }
}

/// Below this width, [`Unfold`] gathers through a table instead of copying runs.
const SMALL_WIDTH: usize = 16;

/// Marks a tap that falls in the padding in [`gather_table`].
const PADDING: u32 = u32::MAX;

/// For each tap (k·k) and output pixel (H'·W'), the input pixel it reads, or [`PADDING`].
fn gather_table(w: Window, h: usize, wd: usize) -> Vec<u32> {
    let l = w.out(h) * w.out(wd);
    let mut table = vec![PADDING; w.kernel * w.kernel * l];
    for_each_run(w, h, wd, |row, col, i, count| {
        for j in 0..count {
            table[row * l + col + j] = (i + j * w.stride) as u32;
        }
    });
    table
}

/// `im2col` for planes of one size: a channel plane (H, W) → its k·k rows of columns, row
/// ky·k + kx, column y'·W' + x' holding x[y'·s − p + ky, x'·s − p + kx], or 0 in the padding.
pub struct Unfold {
    window: Window,
    h: usize,
    wd: usize,
    /// Where each column reads from, for planes narrower than [`SMALL_WIDTH`], whose runs are
    /// too short to copy one by one.
    table: Option<Vec<u32>>,
}

impl Unfold {
    /// Unfolding for (H, W) = (`h`, `wd`) planes under window `w`.
    pub fn new(window: Window, h: usize, wd: usize) -> Self {
        let table = (wd < SMALL_WIDTH).then(|| gather_table(window, h, wd));
        Self { window, h, wd, table }
    }

    /// Writes the columns of `plane` (H·W) into `rows` (k·k rows `stride` long), from column
    /// `offset` on: several images side by side share rows; stride H'·W' and offset 0 for one.
    pub fn plane<T: Float>(&self, plane: &[T], rows: &mut [T], stride: usize, offset: usize) {
        let w = self.window;
        let (k2, l) = (w.kernel * w.kernel, w.out(self.h) * w.out(self.wd));
        if let Some(table) = &self.table {
            for (tap, from) in table.chunks(l).enumerate() {
                let start = tap * stride + offset;
                for (o, &i) in rows[start..start + l].iter_mut().zip(from) {
                    *o = if i == PADDING {
                        T::zero()
                    } else {
                        plane[i as usize]
                    };
                }
            }
            return;
        }
        for tap in 0..k2 {
            rows[tap * stride + offset..tap * stride + offset + l].fill(T::zero());
        }
        for_each_run(w, self.h, self.wd, |row, col, i, count| {
            let start = row * stride + offset + col;
            let out = &mut rows[start..start + count];
            if w.stride == 1 {
                out.copy_from_slice(&plane[i..i + count]);
            } else {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = plane[i + j * w.stride];
                }
            }
        });
    }
}

/// The convolution's output plane from its per-tap products: `out` (H'·W') = Σ over taps t of
/// z_t shifted, out[y', x'] = Σ z_t[y'·s − p + ky, x'·s − p + kx] over in-bounds taps, where
/// z_t, the (H, W) product of tap t's weights with the input, starts at `z[t·tap_stride +
/// offset]`. With k·k·Cout < Cin·k·k this moves less data than unfolding the input.
pub fn sum_taps<T: Float>(
    w: Window,
    (h, wd): (usize, usize),
    z: &[T],
    tap_stride: usize,
    offset: usize,
    out: &mut [T],
) {
    out.fill(T::zero());
    for_each_run(w, h, wd, |tap, col, i, count| {
        let start = tap * tap_stride + offset + i;
        let dst = &mut out[col..col + count];
        if w.stride == 1 {
            dst.iter_mut()
                .zip(&z[start..start + count])
                .for_each(|(o, v)| *o += *v);
        } else {
            for (j, o) in dst.iter_mut().enumerate() {
                *o += z[start + j * w.stride];
            }
        }
    });
}

/// Columns (C·k·k, H'·W') → image (C, H, W), summing overlaps into `image` (zeroed first).
pub fn fold<T: Float>(cols: &[T], c: usize, h: usize, wd: usize, w: Window, image: &mut [T]) {
    let (k2, l) = (w.kernel * w.kernel, w.out(h) * w.out(wd));
    image.fill(T::zero());
    for ch in 0..c {
        let src = &cols[ch * k2 * l..(ch + 1) * k2 * l];
        let dst = &mut image[ch * h * wd..(ch + 1) * h * wd];
        for_each_run(w, h, wd, |row, col, i, count| {
            let from = &src[row * l + col..row * l + col + count];
            for (j, v) in from.iter().enumerate() {
                dst[i + j * w.stride] += *v;
            }
        });
    }
}
