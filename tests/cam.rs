//! Class activation maps against PyTorch's autograd on the same weights and photos, and a
//! sanity test that cannot pass by accident: a net trained here to find a bright square looks
//! at the square.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use common::{assert_close, fixtures_dir, generated_state};
use densenet_zoo::checkpoint::model_from_tensors;
use densenet_zoo::infer::{batch, eval_transform, preprocess_file};
use densenet_zoo::{CamClass, CamMethod, DenseNet, VariantSpec};
use rand::{Rng, SeedableRng};

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures_dir().join("cam.safetensors"), &Device::Cpu).unwrap()
}

/// DenseNet-121 with the fixtures' generated weights, and the two photos as it sees them.
fn densenet121_and_photos() -> (DenseNet, Tensor) {
    let spec = VariantSpec::resolve("121").unwrap();
    let model = model_from_tensors(&spec, generated_state(&spec), "generated", &Device::Cpu).unwrap();
    let t = eval_transform(&spec);
    let images: Vec<Vec<f32>> = ["chelsea", "coffee"]
        .iter()
        .map(|n| preprocess_file(&fixtures_dir().join(format!("images/{n}-256.png")), &t).unwrap())
        .collect();
    (model, batch(&images, &t, &Device::Cpu).unwrap())
}

fn classes(t: &Tensor) -> Vec<usize> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|c| c as usize)
        .collect()
}

#[test]
fn grad_cam_and_cam_match_pytorch_autograd_at_the_last_level_and_an_earlier_one() {
    let want = reference();
    let (model, x) = densenet121_and_photos();
    let block3 = model.level_index("block3").unwrap();
    let block4 = model.level_index("block4").unwrap();
    let fixed = classes(&want["class"]);
    for (which, class) in [
        ("top1", CamClass::Top1),
        ("class", CamClass::PerImage(fixed.clone())),
    ] {
        for (level, name, h) in [(block4, "block4", 7), (block3, "block3", 14)] {
            let got = model.grad_cam(&x, &class, level).unwrap();
            assert_eq!(got.maps.dims(), &[2, h, h]);
            assert_eq!(got.level, level);
            let key = format!("gradcam.{name}.{which}");
            assert_close(&got.maps, &want[&key], 1e-4, &key);
            assert_close(&got.logits, &want["logits"], 1e-4, "logits");
            let expected = if which == "top1" {
                classes(&want["top1"])
            } else {
                fixed.clone()
            };
            assert_eq!(got.classes, expected, "{key}");
        }
        let got = model.cam(&x, &class).unwrap();
        let key = format!("cam.block4.{which}");
        assert_close(&got.maps, &want[&key], 1e-4, &key);
    }
}

#[test]
fn grad_cam_at_the_finest_levels_matches_pytorch_where_batch_norms_output_exact_zeros() {
    // Fresh batch norms (weight 1, bias 0, statistics 0 and 1) pass the stem pool's exact
    // zeros on to ReLUs, whose gradient at 0 is torch's 0 here (candle's own relu passes 1).
    let want = reference();
    let spec = VariantSpec::resolve("121").unwrap();
    let mut state = generated_state(&spec);
    for (name, t) in state.iter_mut() {
        if name.contains("norm") {
            let fresh = if name.ends_with("weight") || name.ends_with("running_var") {
                1.0
            } else {
                0.0
            };
            *t = (t.ones_like().unwrap() * fresh).unwrap();
        }
    }
    let model = model_from_tensors(&spec, state, "fresh norms", &Device::Cpu).unwrap();
    let (_, x) = densenet121_and_photos();
    for name in ["stem", "block1"] {
        let level = model.level_index(name).unwrap();
        let got = model.grad_cam(&x, &CamClass::Top1, level).unwrap();
        assert_eq!(got.classes, classes(&want["fresh.top1"]));
        let key = format!("fresh.gradcam.{name}.top1");
        assert_close(&got.maps, &want[&key], 1e-4, &key);
    }
}

#[test]
fn a_trainable_model_gives_the_same_maps_and_keeps_no_gradient_on_its_weights() {
    let (inference, x) = densenet121_and_photos();
    let spec = VariantSpec::resolve("121").unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let trainable = DenseNet::new(&spec, vb).unwrap();
    for (name, t) in generated_state(&spec) {
        if let Some(var) = varmap.data().lock().unwrap().get(&name) {
            var.set(&t).unwrap();
        }
    }
    let x = x.narrow(0, 0, 1).unwrap();
    let level = trainable.level_index("block3").unwrap();
    let a = trainable.grad_cam(&x, &CamClass::Index(3), level).unwrap();
    let b = inference.grad_cam(&x, &CamClass::Index(3), level).unwrap();
    assert_close(&a.maps, &b.maps, 1e-5, "trainable against inference");
    assert!(!a.maps.track_op() && !a.logits.track_op());
}

#[test]
fn every_level_gives_a_map_at_its_resolution() {
    let (model, x) = densenet121_and_photos();
    let x = x.narrow(0, 0, 1).unwrap();
    for (level, info) in model.feature_info().iter().enumerate() {
        let got = model.grad_cam(&x, &CamClass::Top1, level).unwrap();
        let side = 224 / info.reduction;
        assert_eq!(got.maps.dims(), &[1, side, side], "{}", info.name);
        let peak = got.maps.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(peak > 0.0, "{}: the map is zero everywhere", info.name);
    }
}

#[test]
fn impossible_requests_are_refused_with_what_the_model_has() {
    let (model, x) = densenet121_and_photos();
    let x = x.narrow(0, 0, 1).unwrap();
    let err = |r: densenet_zoo::Result<densenet_zoo::ClassActivationMaps>| r.unwrap_err().to_string();
    let block3 = model.level_index("block3").unwrap();
    let e = err(model.class_activation_maps(&x, CamMethod::Cam, &CamClass::Top1, block3));
    assert!(e.contains("last level (block4)") && e.contains("Grad-CAM"), "{e}");
    let e = err(model.grad_cam(&x, &CamClass::Index(1000), block3));
    assert!(e.contains("class 1000") && e.contains("1000 classes"), "{e}");
    let e = err(model.grad_cam(&x, &CamClass::PerImage(vec![1, 2]), block3));
    assert!(e.contains("2 classes given for 1 images"), "{e}");
    let e = err(model.grad_cam(&x, &CamClass::Top1, 9));
    assert!(e.contains("stem, block1, block2, block3, block4"), "{e}");
    let e = model.level_index("block9").unwrap_err().to_string();
    assert!(e.contains("no level `block9`"), "{e}");
    let empty = Tensor::zeros((0, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
    let e = err(model.grad_cam(&empty, &CamClass::Top1, block3));
    assert!(e.contains("the batch holds no image"), "{e}");
}

/// A dark noisy image (1, S, S) around 0 (as the zero padding is) with three bright bars
/// 1 pixel wide at random places, and when `square` a bright filled square of side `side` at a
/// random place: the bars make the square's edges alone no evidence. Returns the image and the
/// square's (top, left).
fn pattern(
    rng: &mut dyn rand::RngCore,
    size: usize,
    side: usize,
    square: bool,
) -> (Vec<f32>, (usize, usize)) {
    let mut pixels: Vec<f32> = (0..size * size).map(|_| rng.random_range(-0.15..0.15)).collect();
    let mut paint = |rng: &mut dyn rand::RngCore, (h, w): (usize, usize)| {
        let (top, left) = (rng.random_range(0..=size - h), rng.random_range(0..=size - w));
        for y in top..top + h {
            for x in left..left + w {
                pixels[y * size + x] = rng.random_range(0.7..0.9);
            }
        }
        (top, left)
    };
    for bar in 0..3 {
        paint(rng, if bar % 2 == 0 { (1, side) } else { (side, 1) });
    }
    let at = if square { paint(rng, (side, side)) } else { (0, 0) };
    (pixels, at)
}

#[test]
fn a_net_trained_to_find_a_bright_square_looks_at_the_square() {
    const SIZE: usize = 32;
    const SIDE: usize = 10;
    let spec: VariantSpec = serde_json::from_str(
        r#"{"name": "square_finder", "in_channels": 1, "num_classes": 2, "stem": "cifar",
            "stem_features": 16, "growth_rate": 16, "block_config": [1, 1],
            "layer": {"kind": "plain"}, "compression": 0.5,
            "conv_bias": false, "drop_rate": 0.0,
            "preprocess": {"resize": 32, "crop": 32, "mean": [0.0], "std": [1.0]}}"#,
    )
    .unwrap();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let model = DenseNet::new(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let batch_of = |rng: &mut rand::rngs::StdRng, n: usize| {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        let mut squares = Vec::new();
        for i in 0..n {
            let square = i % 2 == 0;
            let (p, at) = pattern(rng, SIZE, SIDE, square);
            pixels.extend(p);
            labels.push(square as u32);
            squares.push(at);
        }
        let x = Tensor::from_vec(pixels, (n, 1, SIZE, SIZE), &dev).unwrap();
        (x, Tensor::new(labels, &dev).unwrap(), squares)
    };
    for _ in 0..300 {
        let (x, y, _) = batch_of(&mut rng, 32);
        let logits = model.forward_t(&x, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    // Held-out images with a square: Grad-CAM for "square" at the last level (16×16),
    // upsampled to the image, peaks inside the square, which covers a tenth of the image (by
    // chance the peak would fall in it about one time in ten). The net's receptive field (10
    // pixels) is about the square's side, so that its evidence for a square is centred on it.
    let (x, y, squares) = batch_of(&mut rng, 80);
    let logits = model.forward_t(&x, false).unwrap();
    let accuracy = logits
        .argmax(D::Minus1)
        .unwrap()
        .eq(&y)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        accuracy > 0.95,
        "the net did not learn the task: accuracy {accuracy}"
    );
    let last = model.feature_info().len() - 1;
    let maps = model.grad_cam(&x, &CamClass::Index(1), last).unwrap().maps;
    let (_, h, w) = maps.dims3().unwrap();
    let (mut inside, mut total) = (0, 0);
    for (i, &(top, left)) in squares.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        let map = maps
            .get(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let heat = densenet_zoo::infer::heat_map::upsample(&map, (h, w), (SIZE as u32, SIZE as u32));
        let peak = (0..heat.len())
            .max_by(|&a, &b| heat[a].total_cmp(&heat[b]))
            .unwrap();
        let (py, px) = (peak / SIZE, peak % SIZE);
        total += 1;
        if (top..top + SIDE).contains(&py) && (left..left + SIDE).contains(&px) {
            inside += 1;
        }
    }
    assert!(
        inside * 10 >= total * 9,
        "the map's peak fell inside the square in {inside} of {total} held-out images"
    );
}

/// DenseNet-121's generated weights as a checkpoint file in `dir`, for the command line.
fn densenet121_checkpoint(dir: &std::path::Path) -> String {
    let spec = VariantSpec::resolve("121").unwrap();
    let mut tensors: Vec<(String, Tensor)> = generated_state(&spec).into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let path = dir.join("densenet121-generated.safetensors");
    densenet_zoo::checkpoint::write_safetensors(&path, &tensors, None).unwrap();
    path.display().to_string()
}

fn photo_args() -> Vec<String> {
    ["chelsea", "coffee"]
        .iter()
        .map(|n| {
            fixtures_dir()
                .join(format!("images/{n}-256.png"))
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn features_writes_the_maps_pytorch_gives() {
    let dir = common::temp("cam", "features");
    let weights = densenet121_checkpoint(&dir);
    let out = dir.join("maps.safetensors");
    let mut args = vec!["features", "--variant", "121", "--weights", &weights];
    let photos = photo_args();
    args.extend(photos.iter().map(String::as_str));
    args.extend([
        "--layer",
        "gradcam",
        "--layer",
        "cam",
        "--out",
        out.to_str().unwrap(),
    ]);
    let run = common::zoo(&args);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let want = reference();
    assert_close(
        &got["gradcam"],
        &want["gradcam.block4.top1"],
        1e-4,
        "features gradcam",
    );
    assert_close(&got["cam"], &want["cam.block4.top1"], 1e-4, "features cam");
    assert_eq!(classes(&got["gradcam_classes"]), classes(&want["top1"]));

    // A fixed class at an earlier level.
    let mut args = vec!["features", "--variant", "121", "--weights", &weights];
    args.extend(photos.iter().map(String::as_str));
    args.extend([
        "--layer",
        "gradcam",
        "--cam-class",
        "281",
        "--cam-level",
        "block3",
    ]);
    args.extend(["--out", out.to_str().unwrap()]);
    let run = common::zoo(&args);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let one = model_map_for_class(281);
    assert_close(&got["gradcam"], &one, 1e-4, "features gradcam, class 281, block3");
    assert_eq!(classes(&got["gradcam_classes"]), vec![281, 281]);
}

/// Grad-CAM on block3 for one class on both photos, from the library.
fn model_map_for_class(class: usize) -> Tensor {
    let (model, x) = densenet121_and_photos();
    let level = model.level_index("block3").unwrap();
    model.grad_cam(&x, &CamClass::Index(class), level).unwrap().maps
}

#[test]
fn infer_draws_each_map_over_the_crop_the_net_saw_and_names_it() {
    let dir = common::temp("cam", "infer");
    let weights = densenet121_checkpoint(&dir);
    let cams = dir.join("maps");
    let mut args = vec!["infer", "--variant", "121", "--weights", &weights, "--json"];
    let photos = photo_args();
    args.extend(photos.iter().map(String::as_str));
    args.extend(["--cam", cams.to_str().unwrap()]);
    let run = common::zoo(&args);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let want_top1 = classes(&reference()["top1"]);
    let lines = String::from_utf8(run.stdout).unwrap();
    for (line, class) in lines.lines().zip(want_top1) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["top"][0]["index"], class);
        let path = PathBuf::from(v["cam"].as_str().unwrap());
        assert_eq!(path.parent().unwrap(), cams);
        let name = path.file_name().unwrap().to_str().unwrap();
        let label = v["top"][0]["label"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .replace(' ', "-");
        let stem = PathBuf::from(v["path"].as_str().unwrap());
        let stem = stem.file_stem().unwrap().to_str().unwrap();
        assert_eq!(name, format!("{stem}.gradcam.{label}.png"));
        // The 224×224 centre crop of a 256×256 photo, scaled up to the overlays' 256 pixels.
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (256, 256));
        let text: String = info.utf8_text.iter().map(|t| t.get_text().unwrap()).collect();
        let prob = v["top"][0]["prob"].as_f64().unwrap();
        assert!(text.contains(&format!("class {class} ")), "{text}");
        assert!(text.contains(&format!("probability {prob:.4}")), "{text}");
        let region = "224×224 region of the image that the network saw (at 224×224)";
        assert!(text.contains(region), "{text}");
    }
    // Flags that choose a map are refused without --cam, and CAM below the last level names why.
    let run = common::zoo(&["infer", "--cam-level", "block1"]);
    assert!(
        common::stderr(&run).contains("pass --cam"),
        "{}",
        common::stderr(&run)
    );
    let out = cams.to_str().unwrap();
    let run = common::zoo(&[
        "infer",
        "--cam",
        out,
        "--cam-method",
        "cam",
        "--cam-level",
        "block1",
    ]);
    let e = common::stderr(&run);
    assert!(
        e.contains("needs the last level (block4)") && e.contains("takes Grad-CAM"),
        "{e}"
    );
    let run = common::zoo(&["infer", "--cam-method", "cam"]);
    assert!(
        common::stderr(&run).contains("pass --cam"),
        "{}",
        common::stderr(&run)
    );
    // Each flag's error names it, before any folder is made.
    let fresh = dir.join("never-made");
    let fresh = fresh.to_str().unwrap();
    for (flag, value, expected) in [
        ("--cam-class", "10", "--cam-class 10: d2l has 10 classes (0 to 9)"),
        (
            "--cam-level",
            "block5",
            "--cam-level block5: d2l has the levels stem 16×16, block1 8×8",
        ),
    ] {
        let run = common::zoo(&["infer", "--cam", fresh, flag, value]);
        assert!(
            common::stderr(&run).contains(expected),
            "{}",
            common::stderr(&run)
        );
        assert!(!Path::new(fresh).exists());
    }
}

/// The shipped Fashion-MNIST examples, copied into a fresh folder, in sub-folders `a` and `b`
/// under the same names, and one named like the first's numbered map would be.
fn clashing_inputs(dir: &Path) -> Vec<PathBuf> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/examples");
    let sandal = examples.join("t10k-00008-sandal.png");
    let mut files = Vec::new();
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        files.push(dir.join(sub).join("shoe.png"));
    }
    files.push(dir.join("a").join("shoe-2.png"));
    for f in &files {
        std::fs::copy(&sandal, f).unwrap();
    }
    files
}

#[test]
fn every_image_gets_its_own_map_and_no_input_is_overwritten() {
    let dir = common::temp("cam", "clash");
    let inputs = clashing_inputs(&dir.join("in"));
    let out = dir.join("maps");
    let mut args: Vec<&str> = vec![
        "infer",
        "--json",
        "--cam-class",
        "5",
        "--cam",
        out.to_str().unwrap(),
    ];
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let run = common::zoo(&args);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let maps: Vec<String> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cam"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let unique: std::collections::HashSet<&String> = maps.iter().collect();
    assert_eq!(unique.len(), 3, "{maps:?}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);

    // Maps written into an input folder would be read as images next time: refused.
    let into_input = dir.join("in").join("maps");
    let run = common::zoo(&[
        "infer",
        dir.join("in").to_str().unwrap(),
        "--cam",
        into_input.to_str().unwrap(),
    ]);
    assert!(
        common::stderr(&run).contains("lies in the input folder"),
        "{}",
        common::stderr(&run)
    );
    // An input named as a map would be is not overwritten: the map takes the next name.
    let taken = out.join("shoe.gradcam.sandal.png");
    let before = std::fs::read(&taken).unwrap();
    let run = common::zoo(&[
        "infer",
        taken.to_str().unwrap(),
        "--cam",
        out.to_str().unwrap(),
        "--cam-class",
        "5",
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    assert_eq!(std::fs::read(&taken).unwrap(), before);
    // A file an earlier run left is replaced, and that is said.
    let again = common::zoo(&[
        "infer",
        inputs[0].to_str().unwrap(),
        "--cam",
        out.to_str().unwrap(),
        "--cam-class",
        "5",
    ]);
    let e = common::stderr(&again);
    assert!(
        again.status.success() && e.contains("1 map replaced files"),
        "{e}"
    );
    // A folder of a map's name is passed over.
    let other = dir.join("other");
    std::fs::create_dir_all(other.join("shoe.gradcam.sandal.png")).unwrap();
    let run = common::zoo(&[
        "infer",
        inputs[0].to_str().unwrap(),
        "--cam",
        other.to_str().unwrap(),
        "--cam-class",
        "5",
        "--json",
    ]);
    let line = String::from_utf8(run.stdout.clone()).unwrap();
    assert!(
        run.status.success() && line.contains("shoe-2.gradcam.sandal.png"),
        "{line}{}",
        common::stderr(&run)
    );
}

#[test]
fn the_embedded_model_draws_on_a_level_that_shows_where_and_says_so() {
    let dir = common::temp("cam", "default-level");
    let out = dir.join("maps");
    let run = common::zoo(&["infer", "--cam", out.to_str().unwrap()]);
    let stderr = common::stderr(&run);
    assert!(run.status.success(), "{stderr}");
    // The book's net at 32×32 ends on a 1×1 map; Grad-CAM goes to block1's 8×8.
    assert!(
        stderr.contains("final map is 1×1") && stderr.contains("drawn on block1 (8×8)"),
        "{stderr}"
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert!(stdout.lines().all(|l| l.contains("; map ")), "{stdout}");
    // features records the maps' level and class, and writes a level named twice once.
    let feats = dir.join("f.safetensors");
    let run = common::zoo(&[
        "features",
        "weights/examples",
        "--layer",
        "gradcam",
        "--layer",
        "gradcam",
        "--out",
        feats.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let file = std::fs::read(&feats).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&file).unwrap();
    let cam = &header.metadata().as_ref().unwrap()["densenet_zoo.cam"];
    assert_eq!(cam, r#"{"gradcam":{"class":"top1","level":"block1"}}"#);
    let got = candle_core::safetensors::load(&feats, &Device::Cpu).unwrap();
    assert_eq!(got["gradcam"].dims(), &[10, 8, 8]);
}
