//! Files people hand over as weights that are not checkpoints this crate reads: recognised by
//! their bytes (the name only breaks a tie), named, and answered with what to do instead.
//!
//! What is read: safetensors, and PyTorch's `torch.save` of a state dict (zip or legacy).
//! What is recognised here: Keras/HDF5 (`.h5`, `.keras`), ONNX, TensorFlow (SavedModel,
//! frozen graphs, checkpoints, TFLite), TorchScript, GGUF and GGML, NumPy (`.npy`, `.npz`),
//! plain Python pickles, compressed archives, Git LFS pointers, web pages, JSON, images and
//! folders.

use std::io::Cursor;
use std::path::Path;

/// How to get what this crate reads, from PyTorch.
const STATE_DICT: &str = "in PyTorch, `torch.save(model.state_dict(), 'weights.pth')` (or \
                          `safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')`)";

/// Where torchvision's ImageNet weights are, for those who only wanted them.
const IMAGENET: &str =
    "torchvision's ImageNet weights are on the hub as hf:timm/densenet121.tv_in1k (169, 201, \
                        161 alike)";

/// What `bytes` (the file at `path`) are, when they are a known format that is not a
/// checkpoint this crate reads: a sentence naming the format and saying what to do. `None`
/// for bytes that may be a safetensors or PyTorch file.
pub(super) fn recognise(bytes: &[u8], path: &Path) -> Option<String> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if looks_like_safetensors(bytes) {
        return None;
    }
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if is_hdf5(bytes) {
        return Some(format!(
            "a Keras/HDF5 file (`model.save` or `save_weights` to .h5), not a PyTorch or safetensors \
             checkpoint: Keras' DenseNets name and lay out their weights differently; {IMAGENET}, or \
             export the weights of a PyTorch model: {STATE_DICT}"
        ));
    }
    if starts(b"PK\x03\x04") {
        return recognise_zip(bytes);
    }
    if starts(b"GGUF") {
        return Some(
            "a GGUF file (llama.cpp's format for language models), not a DenseNet checkpoint".into(),
        );
    }
    if starts(b"lmgg") || starts(b"fmgg") || starts(b"tjgg") {
        return Some("a GGML file (llama.cpp's older format), not a DenseNet checkpoint".into());
    }
    if starts(b"\x93NUMPY") {
        return Some(format!(
            "a NumPy array (`np.save`, .npy): one array, not a state dict of named tensors; save the \
             model's tensors together: {STATE_DICT}"
        ));
    }
    if bytes.len() >= 8 && &bytes[4..8] == b"TFL3" {
        return Some(format!(
            "a TensorFlow Lite model (.tflite), not a PyTorch or safetensors checkpoint: {IMAGENET}"
        ));
    }
    if bytes.len() >= 8 && bytes[bytes.len() - 8..] == [0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb] {
        return Some(format!(
            "a TensorFlow checkpoint index (`tf.train.Checkpoint`, .index), not a PyTorch or \
             safetensors checkpoint: its tensors are in the .data-* files beside it, under \
             TensorFlow's names and layouts; {IMAGENET}"
        ));
    }
    if name.contains(".data-") && name.contains("-of-") {
        return Some(format!(
            "a shard of a TensorFlow checkpoint (.data-NNNNN-of-NNNNN): raw bytes that only its \
             .index file describes, not a PyTorch or safetensors checkpoint; {IMAGENET}"
        ));
    }
    if let Some(what) = compressed(bytes) {
        return Some(format!(
            "{what}: unpack it and pass the checkpoint inside (.safetensors, .pth, .pt or .bin)"
        ));
    }
    if starts(b"version https://git-lfs.github.com/spec") {
        return Some(
            "a Git LFS pointer (a few lines of text that stand for the file), not the file: fetch the \
             file itself (`git lfs pull` in its clone), or read it from the hub as hf:OWNER/REPO:FILE"
                .into(),
        );
    }
    let text_start = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).to_ascii_lowercase();
    let text_start = text_start.trim_start_matches('\u{feff}').trim_start();
    if text_start.starts_with("<!doctype html") || text_start.starts_with("<html") {
        return Some(
            "a web page (HTML), not weights: downloads from the hub's page give its HTML; take the \
             file's `resolve/` link, or read it from the hub as hf:OWNER/REPO:FILE"
                .into(),
        );
    }
    if text_start.starts_with('{') || text_start.starts_with('[') {
        return Some(
            "a JSON file, not weights: a variant spec names the architecture, not its weights; a \
             model's config.json sits beside its weights file, which is the one to pass"
                .into(),
        );
    }
    if let Ok(format) = image::guess_format(bytes) {
        return Some(format!(
            "an image ({format:?}), not weights: images are what a model classifies, and the weights \
             are a checkpoint file"
        ));
    }
    if let [0x80, 2..=5, ..] = bytes {
        return Some(format!(
            "a Python pickle (protocol {}), but not one `torch.save` wrote (neither its zip \
             container nor its legacy stream): {STATE_DICT}",
            bytes[1]
        ));
    }
    if is_protobuf_start(bytes) && matches!(extension.as_str(), "pb" | "pbtxt") {
        return Some(format!(
            "a TensorFlow graph or SavedModel (protocol buffers, .pb), not a PyTorch or safetensors \
             checkpoint; {IMAGENET}"
        ));
    }
    if is_onnx(bytes, &extension) {
        return Some(format!(
            "an ONNX model (a graph, its weights stored as initializers), not a PyTorch or \
             safetensors checkpoint: export the state dict of the PyTorch model it came from: \
             {STATE_DICT}; {IMAGENET}"
        ));
    }
    match extension.as_str() {
        "mlmodel" => Some(format!(
            "a Core ML model, not a PyTorch or safetensors checkpoint; {IMAGENET}"
        )),
        "caffemodel" => Some(format!(
            "a Caffe model, not a PyTorch or safetensors checkpoint; {IMAGENET}"
        )),
        _ => None,
    }
}

/// A zip that is not `torch.save`'s: TorchScript, NumPy's `.npz`, Keras 3's `.keras`.
fn recognise_zip(bytes: &[u8]) -> Option<String> {
    let zip = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let any = |f: &dyn Fn(&str) -> bool| names.iter().any(|n| f(n));
    if any(&|n| n.ends_with("/constants.pkl") || n.contains("/code/__torch__")) {
        return Some(String::from(
            "a TorchScript archive (`torch.jit.save` of a scripted or traced model): its weights \
             are a state dict away: in PyTorch, `torch.save(torch.jit.load(PATH).state_dict(), \
             'weights.pth')`",
        ));
    }
    if !names.is_empty() && names.iter().all(|n| n.ends_with(".npy")) {
        return Some(
            "a NumPy archive (`np.savez`, .npz): save its arrays as safetensors, in Python \
             `safetensors.numpy.save_file(dict(np.load(PATH)), 'weights.safetensors')`, under \
             torchvision's tensor names"
                .into(),
        );
    }
    if any(&|n| n == "model.weights.h5") && any(&|n| n == "config.json") {
        return Some(format!(
            "a Keras 3 model (.keras: a zip of its config and HDF5 weights), not a PyTorch or \
             safetensors checkpoint: Keras' DenseNets name and lay out their weights differently; \
             {IMAGENET}"
        ));
    }
    if !any(&|n| n == "data.pkl" || n.ends_with("/data.pkl")) {
        return Some(format!(
            "a zip archive, but not one `torch.save` wrote (it holds no data.pkl; first entries: \
             {}): unpack it if a checkpoint is inside",
            names.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    None
}

/// HDF5's signature, at offset 0 or a power of two from 512 on (where a user block pushes it).
fn is_hdf5(bytes: &[u8]) -> bool {
    const SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";
    std::iter::once(0)
        .chain((9..=20).map(|p| 1usize << p))
        .take_while(|&offset| offset + SIGNATURE.len() <= bytes.len())
        .any(|offset| &bytes[offset..offset + SIGNATURE.len()] == SIGNATURE)
}

/// The compressed and archive formats, by their magic numbers.
fn compressed(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0x1f, 0x8b]) {
        Some("a gzip file (.gz, .tgz)")
    } else if starts(b"BZh") {
        Some("a bzip2 file")
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("an xz file")
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("a zstd file")
    } else if starts(b"7z\xbc\xaf\x27\x1c") {
        Some("a 7-Zip archive")
    } else if starts(b"Rar!") {
        Some("a RAR archive")
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        Some("a tar archive")
    } else {
        None
    }
}

/// ONNX's `ModelProto` begins with its `ir_version` (field 1, 3 or more since 2017) followed by
/// another of its fields; `torch.onnx.export` writes `08 ir 12 07 "pytorch"`. Bytes that only
/// look like a protobuf count with an `.onnx` name.
fn is_onnx(bytes: &[u8], extension: &str) -> bool {
    let head = match bytes {
        [0x08, 3..=30, next, ..] => matches!(next, 0x12 | 0x1a | 0x22 | 0x28 | 0x32 | 0x3a | 0x42),
        _ => false,
    };
    head || (extension == "onnx" && is_protobuf_start(bytes))
}

/// The first byte is a protobuf tag of field 1 to 15 with a valid wire type.
fn is_protobuf_start(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(&b) if (1..=15).contains(&(b >> 3)) && matches!(b & 7, 0 | 1 | 2 | 5))
}

/// A safetensors file starts with its header's length (8 bytes, little-endian), then `{`:
/// such bytes are left to the safetensors reader.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[8] == b'{'
}

/// A folder given as weights: the checkpoint inside it when there is one file a user likely
/// meant, else what kind of folder it is.
pub(super) fn describe_folder(dir: &Path) -> String {
    let has = |name: &str| dir.join(name).exists();
    if has("saved_model.pb") {
        return format!(
            "a TensorFlow SavedModel folder, not a PyTorch or safetensors checkpoint; {IMAGENET}"
        );
    }
    if dir.extension().is_some_and(|e| e == "mlpackage") {
        return format!("a Core ML package, not a PyTorch or safetensors checkpoint; {IMAGENET}");
    }
    let candidates: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            let n = n.to_ascii_lowercase();
            [".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar"]
                .iter()
                .any(|e| n.ends_with(e))
        })
        .collect();
    match candidates.as_slice() {
        [] => "a folder, not a checkpoint file: pass the weights file itself (.safetensors, .pth, .pt, .bin)"
            .into(),
        [one] => format!(
            "a folder, not a checkpoint file: pass the file in it, {}",
            dir.join(one).display()
        ),
        many => format!(
            "a folder, not a checkpoint file: pass one of the files in it ({})",
            many.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(bytes: &[u8], name: &str) -> String {
        recognise(bytes, Path::new(name)).unwrap_or_else(|| panic!("{name} not recognised"))
    }

    #[test]
    fn each_format_is_named() {
        let mut hdf5 = vec![0u8; 600];
        hdf5[512..520].copy_from_slice(b"\x89HDF\r\n\x1a\n");
        assert!(named(&hdf5, "model.h5").starts_with("a Keras/HDF5 file"));
        assert!(named(b"\x08\x07\x12\x07pytorch\x1a\x032.1", "x.bin").starts_with("an ONNX model"));
        assert!(named(b"\x0a\x05\x0a\x03abc", "model.onnx").starts_with("an ONNX model"));
        assert!(named(b"GGUF\x03\x00\x00\x00", "m.gguf").starts_with("a GGUF file"));
        assert!(named(b"\x93NUMPY\x01\x00v\x00{'descr'", "a.npy").starts_with("a NumPy array"));
        assert!(named(b"\x1c\x00\x00\x00TFL3\x00\x00", "m.tflite").starts_with("a TensorFlow Lite"));
        let index = [
            b"whatever".as_slice(),
            &[0x57, 0xfb, 0x80, 0x8b, 0x24, 0x75, 0x47, 0xdb],
        ]
        .concat();
        assert!(named(&index, "ckpt.index").contains("TensorFlow checkpoint index"));
        assert!(named(b"\x08\x01\x12\x8a\x01", "saved_model.pb").contains("TensorFlow"));
        assert!(named(b"\x1f\x8b\x08\x00", "w.pth.gz").starts_with("a gzip file"));
        assert!(named(
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ab",
            "w.bin"
        )
        .starts_with("a Git LFS"));
        assert!(named(b"<!DOCTYPE html><html>", "model.safetensors").starts_with("a web page"));
        assert!(named(b"{\"architecture\": \"densenet121\"}", "config.json").starts_with("a JSON file"));
        assert!(named(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "cat.png").starts_with("an image (Png)"));
        assert!(named(b"\x80\x04\x95\x10\x00", "model.pkl").starts_with("a Python pickle (protocol 4)"));
        // A safetensors header is not JSON to this test, nor is a .pth's pickle a plain one.
        let st = [&8u64.to_le_bytes()[..], b"{\"a\":{}}"].concat();
        assert_eq!(recognise(&st, Path::new("w.safetensors")), None);
    }

    #[test]
    fn zips_that_torch_save_did_not_write_are_named() {
        use std::io::Write;
        let zip_of = |names: &[&str]| {
            let mut out = Cursor::new(Vec::new());
            let mut zip = zip::ZipWriter::new(&mut out);
            for n in names {
                zip.start_file(*n, zip::write::SimpleFileOptions::default())
                    .unwrap();
                zip.write_all(b"x").unwrap();
            }
            zip.finish().unwrap();
            out.into_inner()
        };
        let script = zip_of(&["m/data.pkl", "m/constants.pkl", "m/code/__torch__/m.py"]);
        assert!(named(&script, "m.pt").starts_with("a TorchScript archive"));
        assert!(named(&zip_of(&["a.npy", "b.npy"]), "w.npz").starts_with("a NumPy archive"));
        let keras = zip_of(&["metadata.json", "config.json", "model.weights.h5"]);
        assert!(named(&keras, "m.keras").starts_with("a Keras 3 model"));
        assert!(named(&zip_of(&["readme.txt"]), "w.zip").starts_with("a zip archive, but not"));
        assert_eq!(
            recognise(
                &zip_of(&["archive/data.pkl", "archive/data/0"]),
                Path::new("w.pth")
            ),
            None
        );
    }
}
