//! Helpers shared by the integration tests: the PyTorch fixtures and tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use densenet_zoo::checkpoint::Checkpoint;
use densenet_zoo::VariantSpec;

/// Runs the command line in the crate's folder and returns what it did.
pub fn zoo(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// A command's standard error, as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh, empty temporary folder for one test: `zoo-{file}-{name}-{pid}`.
pub fn temp(file: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zoo-{file}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The folder of fixtures made by `tests/fixtures/make_fixtures.py`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One fixture case: its spec and every tensor of its safetensors file.
pub struct Fixture {
    pub spec: VariantSpec,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(case: &str) -> Fixture {
        let dir = fixtures_dir();
        let spec = VariantSpec::from_file(&dir.join(format!("{case}.json"))).unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join(format!("{case}.safetensors")), &Device::Cpu).unwrap();
        Fixture { spec, tensors }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    /// The entries under `prefix.`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        let prefix = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_string(), v.clone())))
            .collect()
    }

    /// The initial state dict, in torchvision's names.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.with_prefix("state")
    }
}

/// max |ours − want| / max |want|, computed in float64, asserting equal shapes.
pub fn relative_error(ours: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(ours.dims(), want.dims(), "shapes differ");
    let ours = ours.to_dtype(candle_core::DType::F64).unwrap();
    let want = want.to_dtype(candle_core::DType::F64).unwrap();
    let diff = (ours - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    if diff == 0.0 {
        return 0.0;
    }
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Asserts `ours` matches `want` to `tol` × max |want|.
pub fn assert_close(ours: &Tensor, want: &Tensor, tol: f64, what: &str) {
    let err = relative_error(ours, want);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}

/// n uniforms in [0, 1) from SplitMix64 with state seed + i·γ (i from 1), as
/// `splitmix_uniform` in make_fixtures.py.
pub fn splitmix_uniform(seed: u64, n: usize) -> Vec<f64> {
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        })
        .collect()
}

/// The generated weights of `generated_state` in make_fixtures.py, for any spec.
pub fn generated_state(spec: &VariantSpec) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for (t, info) in densenet_zoo::checkpoint::expected_tensors(spec)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let n: usize = info.shape.iter().product();
        let name = info.name.as_str();
        let fan_in: usize = info.shape[1..].iter().product();
        let values: Vec<f32> = splitmix_uniform(t as u64, n)
            .into_iter()
            .map(|u| {
                let v = if name.ends_with("running_var") {
                    0.5 + 1.5 * u
                } else if name.ends_with("running_mean") || (name.ends_with("bias") && name.contains("norm"))
                {
                    (u - 0.5) * 0.4
                } else if name.ends_with("bias") {
                    (u - 0.5) * 0.2
                } else if name.contains("norm") {
                    0.5 + u
                } else {
                    (2.0 * u - 1.0) * 3f64.sqrt() * (2.0 / fan_in as f64).sqrt()
                };
                v as f32
            })
            .collect();
        out.insert(
            info.name.clone(),
            Tensor::from_vec(values, info.shape.as_slice(), &Device::Cpu).unwrap(),
        );
    }
    out
}

/// Debian's `dataset-fashion-mnist` (`.ci/run` installs it).
pub const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// The real Fashion-MNIST files the tests read: Debian's where installed, else the slice that
/// ships in `tests/fixtures/fashion-mnist` (the first 4,096 training and 1,000 test images,
/// `tests/fixtures/make_fashion_mnist_slice.py`), so that `cargo test` needs nothing but cargo.
pub fn fashion_mnist_dir() -> PathBuf {
    let debian = Path::new(FASHION);
    if debian.join("train-images-idx3-ubyte.gz").is_file() {
        debian.to_path_buf()
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion-mnist")
    }
}

/// Writes the first `train` and `test` samples of the real data set as plain IDX files.
pub fn slice_of_fashion_mnist(name: &str, train: usize, test: usize) -> PathBuf {
    // The folder name tells the IDX reader these are Fashion-MNIST, not MNIST, classes.
    let dir = std::env::temp_dir().join(format!("zoo-fashion-mnist-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (stem, n) in [
        ("train-images-idx3-ubyte", train),
        ("train-labels-idx1-ubyte", train),
        ("t10k-images-idx3-ubyte", test),
        ("t10k-labels-idx1-ubyte", test),
    ] {
        let path = fashion_mnist_dir().join(format!("{stem}.gz"));
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(file).read_to_end(&mut raw).unwrap();
        let rank = raw[3] as usize;
        let per: usize = (1..rank)
            .map(|i| u32::from_be_bytes(raw[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
            .product();
        let header = 4 + 4 * rank;
        let held = u32::from_be_bytes(raw[4..8].try_into().unwrap()) as usize;
        assert!(n <= held, "{} holds {held} samples, {n} asked", path.display());
        let mut out = raw[..header].to_vec();
        out[4..8].copy_from_slice(&(n as u32).to_be_bytes());
        out.extend_from_slice(&raw[header..header + n * per]);
        std::fs::write(dir.join(stem), out).unwrap();
    }
    dir
}

/// Every tensor of a checkpoint but the step counters, sorted by name.
pub fn weights_of(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = Checkpoint::read(path, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = ckpt
        .tensors
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The lines of a run's `metrics.jsonl`.
pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `train` of the book's net at 32×32, batch 64, seed 3, for `epochs` epochs into `out`.
pub fn train_args<'a>(data: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--variant",
        "d2l",
        "--data",
        data,
        "--image-size",
        "32",
        "--epochs",
        epochs,
        "--batch-size",
        "64",
        "--out",
        out,
        "--seed",
        "3",
    ]
}

/// A PNG whose header claims `width`×`height` pixels, with no pixel data.
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let crc = |data: &[u8]| {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    };
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc(&ihdr).to_be_bytes());
    // An empty IDAT, so that a decoder reads the header to its end and knows the size.
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IDAT");
    png.extend_from_slice(&crc(b"IDAT").to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc(b"IEND").to_be_bytes());
    png
}

/// An ImageFolder of `side`×`side` RGB PNGs: `per_class` training and 2 validation images
/// of each class in `classes`, each class a shade.
pub fn image_folder(dir: &Path, classes: &[&str], per_class: u32, side: u32) {
    for (c, class) in classes.iter().enumerate() {
        for (split, n) in [("train", per_class), ("val", 2)] {
            for i in 0..n {
                let path = dir.join(format!("{split}/{class}/{i:02}.png"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let shade = 40 + 70 * c as u32;
                image::RgbImage::from_fn(side, side, |x, y| {
                    let noise = (x * 7 + y * 13 + i * 31) % 40;
                    image::Rgb([(shade + noise) as u8, shade as u8, (shade + 40 - noise) as u8])
                })
                .save(&path)
                .unwrap();
            }
        }
    }
}
