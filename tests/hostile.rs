//! Hostile inputs: each is refused within seconds, with a message that names the file and the
//! problem, and never with a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use common::Fixture;
use densenet_zoo::checkpoint::{state_dict, write_safetensors};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zoo-hostile-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the CLI and returns its stderr, asserting a quick, clean refusal.
fn refused(args: &[&str]) -> String {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?} took {:?}",
        started.elapsed()
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}

fn export(weights: &Path) -> String {
    let out = weights.with_extension("out.safetensors");
    refused(&[
        "export",
        "--weights",
        weights.to_str().unwrap(),
        "--variant",
        "tests/fixtures/tiny_bottleneck.json",
        "--out",
        out.to_str().unwrap(),
    ])
}

/// The tiny fixture's state dict with `edit` applied, written as safetensors.
fn tiny_checkpoint(path: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let f = Fixture::load("tiny_bottleneck");
    let mut tensors = state_dict(&f.spec, &f.state()).unwrap();
    edit(&mut tensors);
    write_safetensors(path, &tensors, None).unwrap();
}

fn replace(tensors: &mut [(String, Tensor)], name: &str, f: impl FnOnce(&Tensor) -> Tensor) {
    let entry = tensors.iter_mut().find(|(n, _)| n == name).unwrap();
    entry.1 = f(&entry.1);
}

#[test]
fn broken_checkpoint_files() {
    let dir = temp("ckpt");
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(export(&empty).contains(&format!("{}: truncated: 0 bytes", empty.display())));

    let good = dir.join("good.safetensors");
    tiny_checkpoint(&good, |_| {});
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = export(&truncated);
    assert!(
        err.contains(&format!(
            "checkpoint {}: not a valid safetensors file",
            truncated.display()
        )),
        "{err}"
    );

    // A header that claims to be 2⁶² bytes long: refused before anything is allocated.
    let huge = dir.join("huge-header.safetensors");
    let mut h = (1u64 << 62).to_le_bytes().to_vec();
    h.extend_from_slice(b"{}");
    std::fs::write(&huge, h).unwrap();
    let err = export(&huge);
    assert!(
        err.contains(&format!(
            "checkpoint {}: not a valid safetensors file",
            huge.display()
        )),
        "{err}"
    );

    // Offsets beyond the end of the data.
    let header = br#"{"features.conv0.weight":{"dtype":"F32","shape":[8,3,7,7],"data_offsets":[0,4704]}}"#;
    let mut out_of_range = (header.len() as u64).to_le_bytes().to_vec();
    out_of_range.extend_from_slice(header);
    out_of_range.extend_from_slice(&[0u8; 16]);
    let offsets = dir.join("offsets.safetensors");
    std::fs::write(&offsets, out_of_range).unwrap();
    let err = export(&offsets);
    assert!(
        err.contains(&format!(
            "checkpoint {}: not a valid safetensors file",
            offsets.display()
        )),
        "{err}"
    );
}

#[test]
fn wrong_dtypes_and_non_finite_weights() {
    let dir = temp("dtype");
    let f16 = dir.join("f16.safetensors");
    tiny_checkpoint(&f16, |t| {
        replace(t, "features.norm0.weight", |w| w.to_dtype(DType::F16).unwrap())
    });
    let err = export(&f16);
    assert!(err.contains(&f16.display().to_string()), "{err}");
    assert!(
        err.contains("tensor features.norm0.weight: expected dtype F32, found F16"),
        "{err}"
    );

    let ints = dir.join("int.safetensors");
    tiny_checkpoint(&ints, |t| {
        replace(t, "classifier.bias", |w| w.to_dtype(DType::I64).unwrap())
    });
    assert!(export(&ints).contains("tensor classifier.bias: expected dtype F32, found I64"));

    // NaN weights are refused (an error, not a warning): every output would be NaN.
    let nan = dir.join("nan.safetensors");
    tiny_checkpoint(&nan, |t| {
        replace(t, "features.denseblock1.denselayer2.conv2.weight", |w| {
            let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[5] = f32::NAN;
            v[9] = f32::INFINITY;
            Tensor::from_vec(v, w.dims(), w.device()).unwrap()
        })
    });
    let err = export(&nan);
    assert!(err.contains(&nan.display().to_string()), "{err}");
    assert!(
        err.contains(
            "tensor features.denseblock1.denselayer2.conv2.weight: 2 of 288 values are NaN or infinite"
        ),
        "{err}"
    );
}

#[test]
fn absurd_specs() {
    let dir = temp("spec");
    let base = include_str!("../variants/densenet121.json");
    for (from, to, expected) in [
        (
            "\"growth_rate\": 32",
            "\"growth_rate\": -32",
            "invalid value: integer `-32`",
        ),
        (
            "\"growth_rate\": 32",
            "\"growth_rate\": 1000000000",
            "growth_rate is 1000000000, more than the limit",
        ),
        (
            "\"block_config\": [6, 12, 24, 16]",
            "\"block_config\": [6, 100000]",
            "more than the limit of 1024",
        ),
        (
            "\"compression\": 0.5",
            "\"compression\": -0.5",
            "compression must be in (0, 1]",
        ),
        (
            "\"input_size\": 224",
            "\"input_size\": 1e400",
            "number out of range",
        ),
    ] {
        let path = dir.join("spec.json");
        std::fs::write(&path, base.replace(from, to)).unwrap();
        let err = refused(&["summary", "--variant", path.to_str().unwrap()]);
        assert!(
            err.contains(&path.display().to_string()) && err.contains(expected),
            "{to}: {err}"
        );
    }
}

/// A PNG whose header claims `width`×`height` pixels, with no pixel data.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
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
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc(b"IEND").to_be_bytes());
    png
}

#[test]
fn hostile_images() {
    let dir = temp("images");
    let giant = dir.join("giant.png");
    std::fs::write(&giant, png_header_only(100_000, 100_000)).unwrap();
    let fake = dir.join("fake.png");
    std::fs::write(&fake, "<html>not a picture</html>").unwrap();
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    for (path, expected) in [
        (&giant, "cannot decode Png"),
        (&fake, "not an image: its bytes match no known format"),
        (&empty, "not an image"),
    ] {
        let err = refused(&["infer", path.to_str().unwrap()]);
        assert!(
            err.contains(&path.display().to_string()) && err.contains(expected),
            "{err}"
        );
    }
}
