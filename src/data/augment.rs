//! The training augmentations ([`Augment`], from the spec's vocabulary) and the random draws
//! they make.

pub use crate::spec::Augment;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// The generator of one sample's random draws: a function of the run's seed, the epoch and the
/// sample's position in the epoch's order, and of nothing else (not the batch, not the
/// worker), so the pixels a model sees do not depend on how the work is split.
pub fn sample_rng(epoch_seed: u64, position: usize) -> StdRng {
    // SplitMix64's finaliser spreads consecutive positions over the whole seed space.
    let mut z = epoch_seed
        ^ (position as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// A crop: `height`×`width` pixels from row `top`, column `left`, as torchvision's
/// `F.crop(img, top, left, height, width)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

/// torchvision's `RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3/4, 4/3))` for
/// a `width`×`height` image: up to ten tries of an area fraction uniform in the scale and a
/// log-uniform aspect ratio, sides rounded half to even, a uniform position; else the
/// centre crop of the whole image clamped to the ratio range.
pub fn random_resized_crop_box(width: u32, height: u32, rng: &mut impl Rng) -> CropBox {
    const SCALE: (f64, f64) = (0.08, 1.0);
    const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
    let area = width as f64 * height as f64;
    let (log_lo, log_hi) = (RATIO.0.ln(), RATIO.1.ln());
    for _ in 0..10 {
        let target_area = area * rng.random_range(SCALE.0..SCALE.1);
        let aspect = rng.random_range(log_lo..log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as u32;
        let h = (target_area / aspect).sqrt().round_ties_even() as u32;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < RATIO.0 {
        (width, (width as f64 / RATIO.0).round_ties_even() as u32)
    } else if in_ratio > RATIO.1 {
        ((height as f64 * RATIO.1).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// fb.resnet.torch's `ColorJitter{brightness = 0.4, contrast = 0.4, saturation = 0.4}` and
/// `Lighting(0.1, eigval, eigvec)`, drawn for one sample and applied to its planar pixels in
/// [0, 1] before normalisation, without clamping, as there.
#[derive(Debug, Clone, PartialEq)]
pub struct ColorNoise {
    /// The three blends in the order drawn: 0 brightness, 1 contrast, 2 saturation.
    order: [usize; 3],
    /// Their factors, by kind, each 1 + U(−0.4, 0.4).
    factors: [f32; 3],
    /// What lighting adds to each of R, G and B.
    lighting: [f32; 3],
}

/// The eigenvalues of ImageNet's RGB covariance (AlexNet; fb.resnet.torch's `pca.eigval`).
const EIGVAL: [f32; 3] = [0.2175, 0.0188, 0.0045];
/// Their eigenvectors, one per column (fb.resnet.torch's `pca.eigvec`).
const EIGVEC: [[f32; 3]; 3] = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
];

impl ColorNoise {
    /// Draws the order, the three factors and the lighting's three N(0, 0.1) coefficients.
    pub fn draw(rng: &mut impl Rng) -> Self {
        let mut order = [0, 1, 2];
        for i in (1..3).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let factors = [0; 3].map(|_| 1.0 + rng.random_range(-0.4f32..0.4));
        let normal = Normal::new(0.0f32, 0.1).expect("a valid normal");
        let alpha = [0; 3].map(|_| normal.sample(rng));
        let lighting = [0, 1, 2].map(|i| (0..3).map(|j| EIGVEC[i][j] * alpha[j] * EIGVAL[j]).sum::<f32>());
        Self {
            order,
            factors,
            lighting,
        }
    }

    /// Applies the noise to `planes` (channels × n values in [0, 1]). One channel (a gray
    /// net) takes brightness and contrast only: saturation and lighting are colour.
    pub fn apply(&self, planes: &mut [f32], channels: usize) {
        let n = planes.len() / channels.max(1);
        for &kind in &self.order {
            let alpha = self.factors[kind];
            match kind {
                0 => planes.iter_mut().for_each(|v| *v *= alpha),
                1 => {
                    let gray = gray(planes, channels, n);
                    let mean = gray.iter().sum::<f32>() / n.max(1) as f32;
                    planes
                        .iter_mut()
                        .for_each(|v| *v = *v * alpha + (1.0 - alpha) * mean);
                }
                _ if channels == 3 => {
                    let gray = gray(planes, channels, n);
                    for plane in planes.chunks_exact_mut(n) {
                        for (v, g) in plane.iter_mut().zip(&gray) {
                            *v = *v * alpha + (1.0 - alpha) * g;
                        }
                    }
                }
                _ => {}
            }
        }
        if channels == 3 {
            for (plane, add) in planes.chunks_exact_mut(n).zip(self.lighting) {
                plane.iter_mut().for_each(|v| *v += add);
            }
        }
    }
}

/// fb.resnet.torch's grayscale: 0.299 R + 0.587 G + 0.114 B (the plane itself for one channel).
fn gray(planes: &[f32], channels: usize, n: usize) -> Vec<f32> {
    if channels != 3 {
        return planes[..n].to_vec();
    }
    (0..n)
        .map(|i| 0.299 * planes[i] + 0.587 * planes[n + i] + 0.114 * planes[2 * n + i])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_boxes_lie_inside_the_image_with_the_area_and_ratio_asked() {
        let mut rng = StdRng::seed_from_u64(3);
        for (w, h) in [(500, 375), (375, 500), (32, 32), (7, 5), (1000, 10)] {
            for _ in 0..500 {
                let b = random_resized_crop_box(w, h, &mut rng);
                assert!(b.width >= 1 && b.height >= 1, "{b:?}");
                assert!(b.left + b.width <= w && b.top + b.height <= h, "{w}×{h}: {b:?}");
            }
        }
        // Far from the fallback, the area fraction spans [0.08, 1) and the ratio [3/4, 4/3].
        let (mut small, mut large) = (1.0f64, 0.0f64);
        for _ in 0..2000 {
            let b = random_resized_crop_box(1000, 1000, &mut rng);
            let fraction = (b.width * b.height) as f64 / 1e6;
            small = small.min(fraction);
            large = large.max(fraction);
            let ratio = b.width as f64 / b.height as f64;
            assert!((0.74..=1.34).contains(&ratio), "{b:?}");
        }
        assert!(small < 0.1 && large > 0.9, "{small} {large}");
        // The fallback for a strip: the centre, at the extreme ratio.
        let mut never = StdRng::seed_from_u64(0);
        let b = random_resized_crop_box(1000, 10, &mut never);
        assert_eq!((b.height, b.width, b.top), (10, 13, 0));
        assert_eq!(b.left, (1000 - 13) / 2);
    }

    #[test]
    fn a_samples_draws_depend_on_its_position_only() {
        let a = sample_rng(7, 12).random::<u64>();
        assert_eq!(a, sample_rng(7, 12).random::<u64>());
        assert_ne!(a, sample_rng(7, 13).random::<u64>());
        assert_ne!(a, sample_rng(8, 12).random::<u64>());
    }

    #[test]
    fn colour_noise_follows_fb_resnet_torch() {
        // Brightness alone on one pixel: a factor; contrast alone: a blend with the gray mean.
        let noise = ColorNoise {
            order: [0, 1, 2],
            factors: [1.2, 1.0, 1.0],
            lighting: [0.0; 3],
        };
        let mut rgb = vec![0.5, 0.1, 0.2, 0.4, 0.3, 0.6];
        noise.apply(&mut rgb, 3);
        let want = [0.6, 0.12, 0.24, 0.48, 0.36, 0.72];
        rgb.iter()
            .zip(want)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{rgb:?}"));
        let noise = ColorNoise {
            order: [1, 0, 2],
            factors: [1.0, 0.5, 1.0],
            lighting: [0.0; 3],
        };
        let mut gray_pixels = vec![0.2, 0.6];
        noise.apply(&mut gray_pixels, 1);
        assert!((gray_pixels[0] - 0.3).abs() < 1e-6 && (gray_pixels[1] - 0.5).abs() < 1e-6);
        // Saturation 0 leaves the gray value in every channel; lighting adds per channel.
        let noise = ColorNoise {
            order: [2, 0, 1],
            factors: [1.0, 1.0, 0.0],
            lighting: [0.01, 0.02, 0.03],
        };
        let mut rgb = vec![1.0, 0.0, 0.0];
        noise.apply(&mut rgb, 3);
        let want = [0.299 + 0.01, 0.299 + 0.02, 0.299 + 0.03];
        rgb.iter()
            .zip(want)
            .for_each(|(a, b)| assert!((a - b).abs() < 1e-6, "{rgb:?}"));
        // The lighting draw is eigvec · (α ⊙ eigval), α ~ N(0, 0.1): small, mostly brightness.
        let drawn = ColorNoise::draw(&mut StdRng::seed_from_u64(1));
        assert!(drawn.lighting.iter().all(|v| v.abs() < 0.2), "{drawn:?}");
        let mut order = drawn.order;
        order.sort();
        assert_eq!(order, [0, 1, 2]);
        assert!(drawn.factors.iter().all(|f| (0.6..1.4).contains(f)));
    }
}
