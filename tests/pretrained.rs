//! The façade a library user calls first, `infer::Pretrained`: opening by name, file or the
//! embedded default, the forms an image comes in, batching and its progress, and the refusals.

mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use common::{assert_close, generated_state, temp};
use densenet_zoo::checkpoint::write_safetensors;
use densenet_zoo::data::images_under;
use densenet_zoo::infer::{ImageInput, OpenOptions, Pretrained, Progress, Source};
use densenet_zoo::{Error, VariantSpec};

fn embedded() -> Pretrained {
    Pretrained::open_with(Source::Embedded, OpenOptions::default()).unwrap()
}

/// The Fashion-MNIST test images shipped with the crate, named after their class.
fn shipped() -> Vec<PathBuf> {
    images_under(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/examples")).unwrap()
}

#[test]
fn the_embedded_model_names_each_shipped_image_by_its_class() {
    let model = embedded();
    let files = shipped();
    let tops = model.classify(&files, 3).unwrap();
    assert_eq!(tops.len(), files.len());
    for (file, top) in files.iter().zip(&tops) {
        assert_eq!(top.len(), 3);
        let name = file.file_stem().unwrap().to_str().unwrap().to_lowercase();
        let label = top[0].label.to_lowercase().replace('/', "-");
        assert!(name.ends_with(&label.replace(' ', "-")), "{name}: {top:?}");
        assert!(top[0].prob >= top[1].prob && top[1].prob >= top[2].prob);
    }
    // k above the number of classes gives every class, once.
    let all = model.classify(&files[..1], 50).unwrap();
    assert_eq!(all[0].len(), 10);
}

#[test]
fn a_file_its_bytes_and_the_decoded_image_give_the_same_probabilities() {
    let model = embedded();
    let file = &shipped()[0];
    let bytes = std::fs::read(file).unwrap();
    let image = densenet_zoo::infer::open_image(file).unwrap();
    let from_file = model.classify([file], 10).unwrap();
    // One at a time: a batch of one runs the same GEMMs as the file's.
    for input in [ImageInput::from(&bytes), ImageInput::from(&image)] {
        assert_eq!(model.classify([input], 10).unwrap(), from_file);
    }
}

#[test]
fn batches_report_progress_and_embed_in_order() {
    let model = embedded();
    let files = shipped();
    let mut seen = Vec::new();
    let embeddings = model.batches(4).on_batch(|p| seen.push(p)).embed(&files).unwrap();
    let total = files.len();
    let want: Vec<Progress> = (1..=total.div_ceil(4))
        .map(|b| Progress {
            done: (b * 4).min(total),
            total,
        })
        .collect();
    assert_eq!(seen, want);
    assert_eq!(
        embeddings.dims(),
        &[total, model.spec().architecture.num_features()]
    );
    // Row i is image i's own pooled features.
    let one = model.embed([&files[5]]).unwrap();
    assert_close(&embeddings.narrow(0, 5, 1).unwrap(), &one, 1e-6, "row 5");
    let x = model.batch(&[model.prepare(&files[5]).unwrap()]).unwrap();
    assert_close(&model.embed_tensor(&x).unwrap(), &one, 0.0, "embed_tensor");
    assert_eq!(model.features(&x).unwrap().len(), model.feature_info().len());
}

#[test]
fn wrong_inputs_are_refused_with_what_is_wrong() {
    let model = embedded();
    let err = Pretrained::open("densenet12").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownVariant { name, known } if name == "densenet12" && known.contains(&"densenet121".to_string())),
        "{err}"
    );
    let err = model.classify(&shipped()[..1], 0).unwrap_err();
    assert!(
        matches!(&err, Error::Setting { field, .. } if field == "k"),
        "{err}"
    );
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/examples");
    let err = model.prepare(&folder).unwrap_err();
    assert!(err.to_string().contains("is a folder, not an image"), "{err}");
    // A run cannot start from weights held in memory, nor from a folder that is not there.
    let dir = temp("pretrained", "refusals");
    let err = model.fine_tune(&dir, None).unwrap_err();
    assert!(
        matches!(&err, Error::Setting { field, .. } if field == "weights"),
        "{err}"
    );
    let err = model.fine_tune(dir.join("missing"), None).unwrap_err();
    assert!(matches!(&err, Error::Data { .. }), "{err}");
}

#[test]
fn a_checkpoint_without_class_names_says_whose_names_its_outputs_get() {
    let dir = temp("pretrained", "names");
    let spec = VariantSpec::resolve("121").unwrap();
    let file = dir.join("torchvision.safetensors");
    let tensors: Vec<(String, Tensor)> = generated_state(&spec).into_iter().collect();
    write_safetensors(&file, &tensors, None).unwrap();
    let model = Pretrained::open(file.to_str().unwrap()).unwrap();
    assert_eq!(model.classes()[0], "tench");
    assert!(
        model
            .notices()
            .iter()
            .any(|n| n.contains("records no class names") && n.contains("imagenet-1k")),
        "{:?}",
        model.notices()
    );
    // Five outputs, no list of five: numbered, and said so.
    let mut five = VariantSpec::resolve("d2l").unwrap();
    five.architecture.num_classes = 5;
    let file5 = dir.join("five.safetensors");
    let tensors: Vec<(String, Tensor)> = generated_state(&five).into_iter().collect();
    write_safetensors(&file5, &tensors, None).unwrap();
    let numbered = Pretrained::open(file5.to_str().unwrap()).unwrap();
    assert_eq!(
        numbered.classes(),
        ["class0", "class1", "class2", "class3", "class4"]
    );
    assert!(
        numbered
            .notices()
            .iter()
            .any(|n| n.contains("named class0 ... class4")),
        "{:?}",
        numbered.notices()
    );
    // A missing file is named as the checkpoint it was to be.
    let err = Pretrained::open(dir.join("gone.pth").to_str().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("checkpoint {}: no such file", dir.join("gone.pth").display())
    );
    // A fine-tuning run from it starts from the same file, frozen up to the level asked for.
    let (config, start) = model.fine_tune(&dir, Some("block3")).unwrap();
    assert_eq!(start.weights.as_deref(), file.to_str());
    assert_eq!(config.freeze.as_deref(), Some("block3"));
    let err = model.fine_tune(&dir, Some("block7")).unwrap_err();
    assert!(matches!(&err, Error::Freeze { .. }), "{err}");
    assert_eq!(model.device().location(), Device::Cpu.location());
}
