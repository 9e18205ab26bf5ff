//! Helpers shared by the integration tests: the PyTorch fixtures and tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use densenet_zoo::VariantSpec;

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
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Asserts `ours` matches `want` to `tol` × max |want|.
pub fn assert_close(ours: &Tensor, want: &Tensor, tol: f64, what: &str) {
    let err = relative_error(ours, want);
    assert!(err <= tol, "{what}: relative error {err:e} > {tol:e}");
}
