//! Image folders as users have them: listed as torchvision's `ImageFolder` lists them (checked
//! against its own listing, tests/fixtures/image_folder/listing.json), hidden entries skipped,
//! and the classes of the folders, not of the variant, in what `train`, `eval`, `infer` and
//! `features` do.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::{fixtures_dir, stderr, zoo};
use densenet_zoo::checkpoint::Checkpoint;
use densenet_zoo::data::{self, Samples, Split};

fn temp(name: &str) -> PathBuf {
    common::temp("folders", name)
}

fn touch(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"").unwrap();
}

/// A 12×12 PNG: class `shade` sets its brightness, `seed` its noise.
fn png(path: &Path, shade: u8, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(12, 12, |x, y| {
        let noise = ((x * 7 + y * 13 + seed * 31) % 40) as u8;
        image::Rgb([shade.saturating_add(noise), shade, shade.saturating_sub(noise)])
    });
    img.save(path).unwrap();
}

fn relative(files: &[PathBuf], root: &Path) -> Vec<String> {
    files
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn classes_and_samples_are_torchvisions() {
    let listing: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("image_folder/listing.json")).unwrap(),
    )
    .unwrap();
    let dir = temp("listing");
    let root = dir.join("train");
    for rel in listing["tree"].as_array().unwrap() {
        touch(&root.join(rel.as_str().unwrap()));
    }
    let dataset = data::open(&dir, Split::Train).unwrap();
    let want_classes: Vec<&str> = listing["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(dataset.classes, want_classes);
    let Samples::Files(files) = &dataset.samples else {
        panic!("an ImageFolder lists files")
    };
    let got: Vec<(String, u32)> = relative(files, &root)
        .into_iter()
        .zip(dataset.labels.clone())
        .collect();
    let want: Vec<(String, u32)> = listing["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_u64().unwrap() as u32))
        .collect();
    assert_eq!(got, want);

    // Hidden folders and files are skipped: a notebook's checkpoints folder is no class, and a
    // macOS resource fork is no image.
    touch(&root.join(".ipynb_checkpoints/cat-checkpoint.png"));
    touch(&root.join("cat/._001.png"));
    touch(&root.join("dog/.cache/x.png"));
    let again = data::open(&dir, Split::Train).unwrap();
    assert_eq!(again.classes, want_classes);
    assert_eq!(again.labels, dataset.labels);
}

#[test]
fn folders_that_would_be_misread_are_refused_naming_the_folder() {
    let dir = temp("refuse");
    png(&dir.join("train/cat/1.png"), 200, 1);
    png(&dir.join("train/dog/1.png"), 40, 1);
    png(&dir.join("val/cat/1.png"), 200, 2);
    png(&dir.join("val/cow/1.png"), 120, 2);
    let err = data::open(&dir, Split::Test).unwrap_err().to_string();
    assert!(
        err.contains(&format!("data {}: its classes differ", dir.join("val").display())),
        "{err}"
    );
    assert!(
        err.contains("missing here: [\"dog\"]; not in train: [\"cow\"]"),
        "{err}"
    );

    std::fs::create_dir_all(dir.join("train/empty/sub")).unwrap();
    touch(&dir.join("train/empty/sub/notes.txt"));
    let err = data::open(&dir, Split::Train).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "data {}: a class folder without any image",
            dir.join("train/empty").display()
        )),
        "{err}"
    );
}

#[test]
fn training_eval_infer_and_features_take_the_classes_from_the_folders() {
    let dir = temp("train");
    let classes = [("cat", 220u8), ("dog", 30u8), ("fox", 120u8)];
    for (c, (name, shade)) in classes.iter().enumerate() {
        for i in 0..6u32 {
            // Some images in nested folders: they must not be dropped.
            let sub = if i % 2 == 0 {
                format!("{name}/batch{i}")
            } else {
                name.to_string()
            };
            png(
                &dir.join(format!("train/{sub}/{i}.png")),
                *shade,
                i + 10 * c as u32,
            );
        }
        png(&dir.join(format!("val/{name}/deep/v.png")), *shade, 99 + c as u32);
    }
    let data = dir.to_str().unwrap();
    let run = dir.join("run");
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "--variant",
            "d2l",
            "--data",
            data,
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "6",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(run.to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let call = |a: Vec<String>| zoo(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // --num-classes that disagrees with the data is an error, before any training.
    let out = call(args(&["--num-classes", "10"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "error: --num-classes 10 disagrees with the data: {data} has 3 classes (cat, dog, fox)"
        )),
        "{}",
        stderr(&out)
    );

    // Without it, the classifier has the data's three classes, and says so.
    let out = call(args(&[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "note: 3 classes from {data} (cat, dog, fox); d2l has 10 outputs, its classifier gets 3"
        )),
        "{}",
        stderr(&out)
    );
    let best = run.join("best.safetensors");
    let ckpt = Checkpoint::read(&best, &Device::Cpu).unwrap();
    let meta = ckpt.metadata.unwrap();
    assert_eq!(meta.classes, ["cat", "dog", "fox"]);
    assert_eq!(meta.spec.architecture.num_classes, 3);
    assert_eq!(ckpt.tensors["classifier.weight"].dims()[0], 3);
    // All 18 training images are found, the nested ones too.
    assert_eq!(data::open(&dir, Split::Train).unwrap().len(), 18);

    // infer names the folders' classes.
    let out = zoo(&[
        "infer",
        "--weights",
        best.to_str().unwrap(),
        "--json",
        dir.join("val/cat").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let labels: Vec<&str> = line["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 3);
    assert!(
        labels.iter().all(|l| ["cat", "dog", "fox"].contains(l)),
        "{labels:?}"
    );

    // eval on the folder's val/ split; and a folder with other classes is refused.
    let out = zoo(&[
        "eval",
        "--weights",
        best.to_str().unwrap(),
        "--data",
        data,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["samples"], 3);
    let two = temp("two");
    png(&two.join("val/cat/1.png"), 220, 1);
    png(&two.join("val/dog/1.png"), 30, 1);
    let out = zoo(&[
        "eval",
        "--weights",
        best.to_str().unwrap(),
        "--data",
        two.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has 2 classes but"), "{}", stderr(&out));

    // features over the ImageFolder writes its labels and class names beside the embeddings.
    let feats = dir.join("feats.safetensors");
    let out = zoo(&[
        "features",
        dir.join("train").to_str().unwrap(),
        "--weights",
        best.to_str().unwrap(),
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tensors = candle_core::safetensors::load(&feats, &Device::Cpu).unwrap();
    assert_eq!(tensors["pooled"].dims()[0], 18);
    let labels = tensors["labels"].to_vec1::<i64>().unwrap();
    assert_eq!(labels, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);

    // Fine-tuning on two classes: the three-class classifier is dropped and made anew.
    let tune = dir.join("tune");
    let fine_tune = || {
        zoo(&[
            "train",
            "--variant",
            "d2l",
            "--data",
            two.to_str().unwrap(),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--out",
            tune.to_str().unwrap(),
            "--weights",
            best.to_str().unwrap(),
        ])
    };
    // val/ only: no train/ split, a clear refusal naming it.
    let out = fine_tune();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("data {}: ", two.join("train").display())),
        "{}",
        stderr(&out)
    );
    png(&two.join("train/cat/1.png"), 220, 3);
    png(&two.join("train/dog/1.png"), 30, 3);
    let out = fine_tune();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "note: classifier: the checkpoint has 3 classes and the model 2: classifier.weight and \
             classifier.bias are skipped and initialised fresh"
        ),
        "{}",
        stderr(&out)
    );
    let tuned = Checkpoint::read(&tune.join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(tuned.tensors["classifier.weight"].dims(), &[2, 248]);
    assert_eq!(tuned.metadata.unwrap().classes, ["cat", "dog"]);
}

#[test]
fn the_photo_recipes_train_end_to_end_and_a_bad_image_is_skipped_or_named() {
    let dir = temp("recipes");
    for (name, shade) in [("cat", 220u8), ("dog", 30u8)] {
        for i in 0..5u32 {
            png(&dir.join(format!("train/{name}/{i}.png")), shade, i);
        }
        png(&dir.join(format!("val/{name}/v.png")), shade, 50);
    }
    std::fs::write(dir.join("train/dog/3.png"), b"GIF89a, cut short").unwrap();
    let data = dir.to_str().unwrap();
    let train = |out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec!["train", "--variant", "d2l", "--data", data, "--image-size", "32"];
        args.extend([
            "--epochs",
            "1",
            "--batch-size",
            "5",
            "--out",
            out.to_str().unwrap(),
        ]);
        args.extend(extra);
        zoo(&args)
    };
    // Without --skip-bad-images the run stops, naming the file.
    let out = train("stops", &["--augment", "imagenet", "--workers", "2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("train/dog/3.png"), "{}", stderr(&out));
    // With it, the file is named in a note and the epoch ends; the recipe is in the banner and
    // in the checkpoint's configuration.
    let extra = [
        "--augment",
        "fb",
        "--label-smoothing",
        "0.1",
        "--workers",
        "3",
        "--skip-bad-images",
    ];
    let out = train("skips", &extra);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("augment fb, label smoothing 0.1"), "{err}");
    assert!(
        err.contains("note: skipped ") && err.contains("train/dog/3.png"),
        "{err}"
    );
    let config = densenet_zoo::train::saved_config(&dir.join("skips")).unwrap();
    assert_eq!(config.recipe.augment, densenet_zoo::data::Augment::Fb);
    assert_eq!(config.recipe.label_smoothing, 0.1);
    assert!(config.skip_bad_images);
    // An unknown recipe is refused by the command line, listing the known ones.
    let out = train("unknown", &["--augment", "autoaugment"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("crop-flip"), "{}", stderr(&out));
}

#[test]
fn a_last_batch_of_one_image_is_left_out_with_a_note() {
    // Seven images in batches of three: the last batch holds one image, and the book's net at
    // 32×32 ends on 1×1 maps, where batch norm in training has a single value per channel.
    let dir = temp("batch-of-one");
    for (name, shade, count) in [("cat", 220u8, 4u32), ("dog", 30u8, 3u32)] {
        for i in 0..count {
            png(&dir.join(format!("train/{name}/{i}.png")), shade, i);
        }
        png(&dir.join(format!("val/{name}/v.png")), shade, 50);
    }
    let out = dir.join("run");
    let out = zoo(&[
        "train",
        "--variant",
        "d2l",
        "--data",
        dir.to_str().unwrap(),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "note: batch 3 holds one image, too few for batch norm on the last block's 1×1 maps: left out"
        ),
        "{err}"
    );
}
