//! Hostile inputs: each is refused within seconds, with a message that names the file and the
//! problem, and never with a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use common::{png_header_only, Fixture};
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
    // Other float dtypes are cast, as torch's load_state_dict does (tests/wild_checkpoints.rs).
    let out = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "export",
            "--weights",
            f16.to_str().unwrap(),
            "--variant",
            "tests/fixtures/tiny_bottleneck.json",
            "--out",
            dir.join("f16.out.safetensors").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("note: cast 1 float16 tensor to float32, as PyTorch's load_state_dict does"));

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

#[test]
fn hostile_images() {
    let dir = temp("images");
    let giant = dir.join("giant.png");
    std::fs::write(&giant, png_header_only(100_000, 100_000)).unwrap();
    let fake = dir.join("fake.png");
    std::fs::write(&fake, "<html>not a picture</html>").unwrap();
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    // Decodable, but the shorter side resized to 32 would make 6,400,000×32 pixels, more
    // than PIL opens.
    let sliver = dir.join("sliver.png");
    image::GrayImage::new(200_000, 1).save(&sliver).unwrap();
    for (path, expected) in [
        (&sliver, "a 200000×1 image is too elongated"),
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

#[test]
fn hostile_data_sets() {
    let train = |dir: &Path| {
        let out = dir.join("run");
        refused(&[
            "train",
            "--variant",
            "d2l",
            "--data",
            dir.to_str().unwrap(),
            "--epochs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let idx = temp("idx");
    let images = idx.join("train-images-idx3-ubyte");
    let labels = idx.join("train-labels-idx1-ubyte");
    let mut header = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    header.extend(vec![0u8; 2 * 28 * 28]);
    std::fs::write(&images, &header).unwrap();
    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 2, 3, 4]).unwrap();
    for (i, l) in [
        ("t10k-images-idx3-ubyte", &images),
        ("t10k-labels-idx1-ubyte", &labels),
    ] {
        std::fs::copy(l, idx.join(i)).unwrap();
    }

    std::fs::write(&labels, [0, 0, 8, 2, 0, 0, 0, 2, 3, 4]).unwrap();
    let err = train(&idx);
    assert!(
        err.contains(&format!("data {}: wrong magic number", labels.display())),
        "{err}"
    );

    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 60, 3, 4]).unwrap();
    let err = train(&idx);
    assert!(
        err.contains(&format!(
            "data {}: the header says [60] = 60 values, but 2 follow",
            labels.display()
        )),
        "{err}"
    );

    let cifar = temp("cifar");
    for name in ["train.bin", "test.bin"] {
        std::fs::write(cifar.join(name), vec![1u8; 3074 + 100]).unwrap();
    }
    let err = train(&cifar);
    assert!(
        err.contains(&format!(
            "data {}: 3174 bytes is not a whole number of 3074-byte records",
            cifar.join("train.bin").display()
        )),
        "{err}"
    );

    let folder = temp("no-classes");
    std::fs::create_dir_all(folder.join("train")).unwrap();
    std::fs::create_dir_all(folder.join("val")).unwrap();
    let err = train(&folder);
    assert!(
        err.contains(&format!("data {}", folder.join("train").display())) && err.contains("no class folders"),
        "{err}"
    );
}

/// Copies the zip at `from` to `to`, passing each entry's bytes through `edit`.
fn rezip(from: &Path, to: &Path, edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::fs::File::open(from).unwrap()).unwrap();
    let mut out = zip::ZipWriter::new(std::fs::File::create(to).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.start_file(name.as_str(), options).unwrap();
        out.write_all(&edit(&name, bytes)).unwrap();
    }
    out.finish().unwrap();
}

#[test]
fn hostile_pth_files() {
    let dir = temp("pth");
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_plain_book.pth");

    // A pickle whose string claims 2 GiB: refused before anything is allocated.
    let huge_string = dir.join("huge-string.pth");
    rezip(&book, &huge_string, |name, bytes| {
        if name.ends_with("data.pkl") {
            b"\x80\x02X\xff\xff\xff\x7fabc.".to_vec()
        } else {
            bytes
        }
    });
    let err = export(&huge_string);
    assert!(
        err.contains(&format!("checkpoint {}: ", huge_string.display()))
            && err.contains("data.pkl: opcode 0x58 at byte 2: claims 2147483647 bytes, but 4 remain"),
        "{err}"
    );

    // A tensor's storage cut to 4 bytes: its shape no longer fits.
    let short_storage = dir.join("short-storage.pth");
    rezip(&book, &short_storage, |name, bytes| {
        if name.ends_with("data/0") {
            bytes[..4].to_vec()
        } else {
            bytes
        }
    });
    let err = export(&short_storage);
    assert!(
        err.contains(&format!(
            "checkpoint {}: PyTorch zip (torch.save, 1.6 and later): tensor 0.0.weight: shape [8, 1, 7, 7]",
            short_storage.display()
        )) && err.contains("needs 392 elements, but its storage 0 holds 1"),
        "{err}"
    );

    // Half a file: no zip directory at its end.
    let bytes = std::fs::read(&book).unwrap();
    let half = dir.join("half.pth");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let err = export(&half);
    assert!(
        err.contains(&format!(
            "checkpoint {}: PyTorch zip (torch.save, 1.6 and later): not a readable zip archive",
            half.display()
        )),
        "{err}"
    );
}

/// `mpirun -np 2 densenet-zoo train` (or `srun`) before training spans processes: each rank
/// would train alone into the same folder, so it is refused before anything is written.
#[test]
fn train_refuses_to_run_as_one_of_many_launched_processes() {
    let dir = temp("launched");
    for (var, size) in [
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("PMI_SIZE", "4"),
        ("SLURM_STEP_NUM_TASKS", "8"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
            .args(["train", "--epochs", "1", "--out", dir.to_str().unwrap()])
            .env(var, size)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(&format!("one of {size} processes")),
            "{var}: {err}"
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "{var}: wrote into --out"
        );
    }
    assert_eq!(
        densenet_zoo::train::distributed::launched_world_size(),
        None,
        "the tests run under no launcher"
    );
}
