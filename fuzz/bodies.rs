//! What each fuzz target does with one input: the library's real entry points for untrusted
//! bytes, from parsing to the checks that follow it. Shared by `fuzz_targets/*.rs` (libFuzzer,
//! nightly) and `tests/fuzz_corpus.rs` (which replays the committed corpus on stable Rust).
//! Any panic, hang or unbounded allocation is a bug; an `Err` is the expected answer to junk.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::Device;
use densenet_zoo::checkpoint::{expected_tensors, Checkpoint};
use densenet_zoo::data::Transform;
use densenet_zoo::data::{cifar, idx};
use densenet_zoo::infer::preprocess_bytes;
use densenet_zoo::VariantSpec;

/// Safetensors bytes with `__metadata__`: parse, pick the spec, adapt, check, build.
pub fn checkpoint(data: &[u8]) {
    if let Ok(ckpt) = Checkpoint::from_bytes(data, "fuzz.safetensors", &Device::Cpu) {
        use_checkpoint(ckpt);
    }
}

fn use_checkpoint(mut ckpt: Checkpoint) {
    let Ok(spec) = ckpt.spec(None) else { return };
    if ckpt.adapt(&spec, false).is_ok() && ckpt.check(&spec).is_ok() {
        let _ = ckpt.into_model(&spec, &Device::Cpu);
    }
}

/// A PyTorch `.pth` (a zip holding a pickle, or the legacy stream of pickles and storages),
/// through a file as users pass it.
pub fn pth(data: &[u8]) {
    let path = scratch_file("pth");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(ckpt) = Checkpoint::read(&path, &Device::Cpu) {
            use_checkpoint(ckpt);
        }
    }
}

/// A variant spec: parse, validate, and everything that sizes a model from it.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = VariantSpec::from_json(text, "fuzz.json") else {
        return;
    };
    let _ = spec.architecture.min_input_size();
    let _ = spec.architecture.stage_sizes(spec.input_size());
    let _ = spec.architecture.num_features();
    let _ = expected_tensors(&spec);
    let _ = densenet_zoo::tools::summary::summarize(&spec, spec.architecture.min_input_size());
}

/// An IDX file, gzipped or not, read as images (3 dimensions) and as labels (1).
pub fn idx(data: &[u8]) {
    let path = Path::new("fuzz-idx3-ubyte");
    let _ = idx::decode(Cursor::new(data), 3, path);
    let _ = idx::decode(Cursor::new(data), 1, path);
}

/// A CIFAR-10 and a CIFAR-100 binary batch.
pub fn cifar(data: &[u8]) {
    let path = Path::new("fuzz_batch.bin");
    let _ = cifar::parse_batch(data, 1, path);
    let _ = cifar::parse_batch(data, 2, path);
}

/// An image file through `infer`'s preprocessing (decode, size checks, luma or RGB, resize of
/// the shorter side, centre crop, normalisation), to a gray 28-pixel and an RGB 24-pixel input:
/// the path of every variant, at sizes that keep each run fast.
pub fn image(data: &[u8]) {
    for (channels, size, resize) in [(1, 28, 28), (3, 24, 27)] {
        let transform = Transform {
            size,
            resize,
            channels,
            mean: vec![0.5; channels],
            std: vec![0.25; channels],
            augment: densenet_zoo::data::Augment::None,
        };
        let _ = preprocess_bytes(data.to_vec(), &transform);
    }
}

/// A file of this process's own in the fastest temporary folder.
fn scratch_file(ext: &str) -> PathBuf {
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("densenet-zoo-fuzz-{}.{ext}", std::process::id()))
}
