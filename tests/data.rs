//! The data readers on small files of each format, and their refusals.

use std::path::PathBuf;
use std::sync::Arc;

use densenet_zoo::data::{self, Augment, Loader, Samples, Split, Transform};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zoo-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn transform(size: usize, channels: usize) -> Transform {
    Transform {
        size,
        resize: size,
        channels,
        mean: vec![0.0; channels],
        std: vec![1.0; channels],
        augment: Augment::None,
    }
}

#[test]
fn cifar10_batches_read_labels_and_planar_pixels() {
    let dir = temp("cifar");
    // Record r of batch b: label (b + r) % 10, every pixel of channel c = 10·c + r.
    for (b, name) in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    .iter()
    .enumerate()
    {
        let mut bytes = Vec::new();
        for r in 0..3u8 {
            bytes.push((b as u8 + r) % 10);
            for c in 0..3u8 {
                bytes.extend(std::iter::repeat_n(10 * c + r, 1024));
            }
        }
        std::fs::write(dir.join(format!("{name}.bin")), bytes).unwrap();
    }
    let train = data::open(&dir, Split::Train).unwrap();
    assert_eq!(train.len(), 15);
    assert_eq!(train.labels[..4], [0, 1, 2, 1]);
    assert_eq!(train.classes[3], "cat");
    let test = Arc::new(data::open(&dir, Split::Test).unwrap());
    assert_eq!(test.labels, [5, 6, 7]);
    let batch = Loader::new(test, vec![2, 0], 2, transform(32, 3), 0, 0)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(batch.labels, [7, 5]);
    // Image 2, channel 1 is 10·1 + 2 = 12 everywhere, scaled to [0, 1].
    assert_eq!(batch.images[1024], 12.0 / 255.0);
    assert_eq!(batch.images.len(), 2 * 3 * 32 * 32);

    std::fs::write(dir.join("test_batch.bin"), vec![0u8; 3000]).unwrap();
    let err = data::open(&dir, Split::Test).unwrap_err().to_string();
    assert!(
        err.contains("test_batch.bin: 3000 bytes is not a whole number of 3073-byte records"),
        "{err}"
    );
}

#[test]
fn an_image_folder_tree_has_sorted_classes_and_decodes_on_load() {
    let dir = temp("folder");
    for (split, class, n) in [
        ("train", "zebra", 2),
        ("train", "apple", 1),
        ("val", "apple", 1),
        ("val", "zebra", 1),
    ] {
        let d = dir.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_pixel(40, 30, image::Rgb([200, 100, (i * 50) as u8]));
            img.save(d.join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(dir.join("train/zebra/readme.txt"), "not an image").unwrap();
    let train = data::open(&dir, Split::Train).unwrap();
    assert_eq!(train.classes, ["apple", "zebra"]);
    assert_eq!(train.labels, [0, 1, 1]);
    assert!(matches!(train.samples, Samples::Files(ref f) if f.len() == 3));
    let val = Arc::new(data::open(&dir, Split::Test).unwrap());
    let batch = Loader::new(val, vec![0, 1], 2, transform(24, 3), 0, 0)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(batch.labels, [0, 1]);
    assert!((batch.images[0] - 200.0 / 255.0).abs() < 1e-6);

    // A bad file inside is named when the batch is loaded.
    std::fs::write(dir.join("val/zebra/0.png"), "broken").unwrap();
    let val = Arc::new(data::open(&dir, Split::Test).unwrap());
    let err = Loader::new(val, vec![1], 1, transform(24, 3), 0, 0)
        .next()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("val/zebra/0.png") && err.contains("not an image"),
        "{err}"
    );

    let empty = temp("empty-classes");
    std::fs::create_dir_all(empty.join("train")).unwrap();
    let err = data::open(&empty, Split::Train).unwrap_err().to_string();
    assert!(err.contains("no class folders"), "{err}");
}

#[test]
fn idx_files_are_checked_against_their_header() {
    let dir = temp("idx");
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
    images.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    std::fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 2, 3, 9],
    )
    .unwrap();
    let set = data::open(&dir, Split::Train).unwrap();
    assert_eq!(set.labels, [3, 9]);

    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 3, 3, 9],
    )
    .unwrap();
    let err = data::open(&dir, Split::Train).unwrap_err().to_string();
    assert!(
        err.contains("the header says [3] = 3 values, but 2 follow"),
        "{err}"
    );

    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        [0, 0, 9, 1, 0, 0, 0, 2, 3, 9],
    )
    .unwrap();
    let err = data::open(&dir, Split::Train).unwrap_err().to_string();
    assert!(
        err.contains("train-labels-idx1-ubyte: wrong magic number"),
        "{err}"
    );

    let err = data::open(&temp("nothing"), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a data set"), "{err}");
}
