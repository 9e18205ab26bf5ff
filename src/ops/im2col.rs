//! `im2col` and `col2im` for one image: convolution as matrix multiplication.
//!
//! `unfold` turns an image (C, H, W) into columns (C·k·k, H'·W'): row c·k·k + ky·k + kx, column
//! y'·W' + x' holds x[c, y'·s − p + ky, x'·s − p + kx], or 0 in the padding. A k×k conv is then
//! the weight (Cout, C·k·k) times the columns. `fold` is its adjoint: it adds columns back
//! into an image, summing overlapping taps, which gives the input gradient.

use candle_core::WithDType;

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

/// Below this width, [`unfold`] gathers through a table instead of copying runs.
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

/// Image (C, H, W) → columns (C·k·k, H'·W'), written into `cols`, whose rows are `stride`
/// long, from column `offset` on (several images side by side; stride H'·W' and offset 0 for
/// one). The image's columns are zeroed first.
#[allow(clippy::too_many_arguments)]
pub fn unfold<T: WithDType>(
    image: &[T],
    c: usize,
    h: usize,
    wd: usize,
    w: Window,
    cols: &mut [T],
    stride: usize,
    offset: usize,
) {
    let (k2, l) = (w.kernel * w.kernel, w.out(h) * w.out(wd));
    if wd < SMALL_WIDTH {
        // Runs of a few pixels: one gather through a table of where each column reads from.
        let table = gather_table(w, h, wd);
        for ch in 0..c {
            let src = &image[ch * h * wd..(ch + 1) * h * wd];
            for (tap, from) in table.chunks(l).enumerate() {
                let start = (ch * k2 + tap) * stride + offset;
                for (o, &i) in cols[start..start + l].iter_mut().zip(from) {
                    *o = if i == PADDING { T::zero() } else { src[i as usize] };
                }
            }
        }
        return;
    }
    for row in 0..c * k2 {
        cols[row * stride + offset..row * stride + offset + l].fill(T::zero());
    }
    for ch in 0..c {
        let src = &image[ch * h * wd..(ch + 1) * h * wd];
        let dst = &mut cols[ch * k2 * stride..];
        for_each_run(w, h, wd, |row, col, i, count| {
            let start = row * stride + offset + col;
            let out = &mut dst[start..start + count];
            if w.stride == 1 {
                out.copy_from_slice(&src[i..i + count]);
            } else {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = src[i + j * w.stride];
                }
            }
        });
    }
}

/// Columns (C·k·k, H'·W') → image (C, H, W), summing overlaps into `image` (zeroed first).
pub fn fold<T: WithDType>(cols: &[T], c: usize, h: usize, wd: usize, w: Window, image: &mut [T]) {
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
