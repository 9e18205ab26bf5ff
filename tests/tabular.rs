//! The tabular nets against pandas and PyTorch (tests/fixtures/make_tabular_fixtures.py), and
//! the house-price task end to end through the command line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_close, fixtures_dir, stderr, temp, zoo};
use densenet_zoo::ops::Mode;
use densenet_zoo::tabular::{ColumnOptions, CsvTable, MlpSpec, Schema};
use densenet_zoo::DenseMlp;

fn fixture() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures_dir().join("tabular.safetensors"), &Device::Cpu).unwrap()
}

fn with_prefix(tensors: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
        .collect()
}

fn small_houses() -> PathBuf {
    fixtures_dir().join("tabular/houses_small.csv")
}

#[test]
fn preprocessing_matches_pandas_on_a_training_and_a_held_out_split() {
    let want = fixture();
    let table = CsvTable::read(&small_houses()).unwrap();
    let options = ColumnOptions {
        target: "Sale_Price".into(),
        ..Default::default()
    };
    let (schema, _) = Schema::infer(&table, &options).unwrap();
    assert_eq!(schema.id_column.as_deref(), Some("Id"));
    let (train, valid) = (
        table.select(&(0..8).collect::<Vec<_>>()),
        table.select(&(8..12).collect::<Vec<_>>()),
    );
    let p = schema.fit(&train).unwrap();
    for (part, name) in [(&train, "preprocess.train"), (&valid, "preprocess.valid")] {
        let e = p.encode(part).unwrap();
        let ours = Tensor::from_vec(e.values, (e.rows, p.width()), &Device::Cpu).unwrap();
        assert_close(&ours, &want[name], 1e-6, name);
    }
    // The held-out houses have a zone and a roof the training ones lack: zeros, and counted.
    let unseen = p.encode(&valid).unwrap().unseen;
    assert_eq!(unseen.len(), 2, "{unseen:?}");
    let logs = Tensor::new(p.log_targets(&table).unwrap(), &Device::Cpu).unwrap();
    assert_close(&logs, &want["preprocess.log_target"], 1e-15, "log target");
}

fn spec(connectivity: &str) -> MlpSpec {
    let recipe = MlpSpec::find_builtin("dense-mlp").unwrap().recipe;
    MlpSpec::from_json(
        &format!(
            r#"{{"name": "t", "connectivity": {connectivity}, "recipe": {}}}"#,
            serde_json::to_string(&recipe).unwrap()
        ),
        "test",
    )
    .unwrap()
}

/// The torch fixture's net `prefix` against ours on the same float64 weights: outputs in eval
/// and train mode, running statistics after the train pass, every parameter's gradient.
fn check_net_against_torch(prefix: &str, spec: &MlpSpec) {
    let want = fixture();
    let weights = with_prefix(&want, &format!("{prefix}.weights."));
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (name, t) in &weights {
            data.insert(name.clone(), Var::from_tensor(t).unwrap());
        }
    }
    let model = DenseMlp::new(
        spec,
        7,
        VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu),
    )
    .unwrap();
    let torch_parameters: usize = with_prefix(&want, &format!("{prefix}.grad."))
        .values()
        .map(|t| t.elem_count())
        .sum();
    assert_eq!(DenseMlp::parameter_count(spec, 7).unwrap(), torch_parameters);
    let x = &want[&format!("{prefix}.x")];
    for mode in [Mode::Eval, Mode::Inference] {
        let y = model.forward(x, mode).unwrap();
        assert_close(
            &y,
            &want[&format!("{prefix}.eval")],
            1e-12,
            &format!("{prefix} {mode:?}"),
        );
    }
    let y = model.forward(x, Mode::Train).unwrap();
    assert_close(
        &y,
        &want[&format!("{prefix}.train")],
        1e-12,
        &format!("{prefix} train"),
    );
    let data = varmap.data().lock().unwrap().clone();
    for (name, t) in with_prefix(&want, &format!("{prefix}.after_train.")) {
        assert_close(data[&name].as_tensor(), &t, 1e-12, &name);
    }
    let target = &want[&format!("{prefix}.target")];
    let loss = (y - target).unwrap().sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, t) in with_prefix(&want, &format!("{prefix}.grad.")) {
        let g = grads
            .get(data[&name].as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let largest = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        if name.ends_with("linear.bias") {
            // Batch norm in training removes a bias before it: its gradient is 0 up to rounding
            // on both sides.
            assert!(largest(&t) < 1e-14 && largest(g) < 1e-14, "{name}: {t} and {g}");
        } else {
            assert_close(g, &t, 1e-10, &format!("{prefix} gradient of {name}"));
        }
    }
}

#[test]
fn the_dense_mlp_matches_torch() {
    check_net_against_torch(
        "dense",
        &spec(
            r#"{"kind": "dense", "stem_width": 6, "growth_width": 3, "block_config": [2, 2], "compression": 0.5}"#,
        ),
    );
}

#[test]
fn the_plain_mlp_matches_torch() {
    check_net_against_torch("plain", &spec(r#"{"kind": "plain", "hidden_widths": [4, 5]}"#));
}

#[test]
fn the_plain_baseline_has_the_dense_nets_parameter_count_on_any_input() {
    let dense = MlpSpec::find_builtin("dense-mlp").unwrap();
    let plain = MlpSpec::find_builtin("plain-mlp").unwrap();
    let linear = MlpSpec::find_builtin("linear").unwrap();
    for inputs in [10, 352, 2000] {
        let d = DenseMlp::parameter_count(&dense, inputs).unwrap() as f64;
        let p = DenseMlp::parameter_count(&plain, inputs).unwrap() as f64;
        assert!((d - p).abs() / d < 1e-3, "{inputs} inputs: dense {d}, plain {p}");
        assert_eq!(DenseMlp::parameter_count(&linear, inputs).unwrap(), inputs + 1);
        // The README's formulas.
        assert_eq!(d as usize, 128 * inputs + 79_617);
        assert_eq!(p as usize, 128 * inputs + 79_639);
    }
}

#[test]
fn specs_are_refused_with_the_field_named() {
    for (connectivity, says) in [
        (
            r#"{"kind": "dense", "stem_width": 6, "growth_width": 3, "block_config": [], "compression": 0.5}"#,
            "block_config",
        ),
        (
            r#"{"kind": "dense", "stem_width": 6, "growth_width": 3, "block_config": [2], "compression": 1.5}"#,
            "compression",
        ),
        (r#"{"kind": "plain", "hidden_widths": [4, 0]}"#, "hidden_widths"),
        (
            r#"{"kind": "dense", "stem_width": 1000000000, "growth_width": 3, "block_config": [2], "compression": 0.5}"#,
            "stem_width is 1000000000, more than the limit",
        ),
        (
            r#"{"kind": "dense", "stem_width": 6, "growth_width": 3, "block_config": [10000000], "compression": 0.5}"#,
            "more than the limit of 1024",
        ),
        (
            r#"{"kind": "plain", "hidden_widths": [1000000000000]}"#,
            "more than the limit",
        ),
        (r#"{"kind": "sparse"}"#, "sparse"),
    ] {
        let recipe = serde_json::to_string(&MlpSpec::find_builtin("dense-mlp").unwrap().recipe).unwrap();
        let text = format!(r#"{{"name": "t", "connectivity": {connectivity}, "recipe": {recipe}}}"#);
        let e = MlpSpec::from_json(&text, "mine.json").unwrap_err().to_string();
        assert!(e.contains("mine.json") && e.contains(says), "{e}");
    }
}

/// `rows` houses whose log price is a known function of an area, a year and a zone, plus
/// noise of sd 0.05: something a net can learn, with a floor on its error.
fn synthetic_houses(path: &Path, rows: usize, seed: u64, with_price: bool) {
    let u = common::splitmix_uniform(seed, rows * 4);
    let zones = ["RL", "RM", "FV", "C (all)"];
    let mut text = String::from(if with_price {
        "Id,Area,Year,Zone,Price\n"
    } else {
        "Id,Area,Year,Zone\n"
    });
    for i in 0..rows {
        let area = 500.0 + 3000.0 * u[4 * i];
        let year = 1900 + (u[4 * i + 1] * 110.0) as i32;
        let zone = zones[(u[4 * i + 2] * 4.0) as usize];
        let effect = match zone {
            "RL" => 0.1,
            "RM" => -0.1,
            "FV" => 0.3,
            _ => -0.4,
        };
        let noise = (u[4 * i + 3] - 0.5) * 0.05 * 12f64.sqrt();
        let log_price = 11.0 + 0.0004 * area + 0.004 * (year - 1950) as f64 + effect + noise;
        text.push_str(&format!("{},{area:.0},{year},{zone}", 1000 + i));
        if with_price {
            text.push_str(&format!(",{:.0}", log_price.exp()));
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn train_cross_validates_saves_and_infer_predicts_a_csv() {
    let dir = temp("tabular", "end-to-end");
    let data = dir.join("houses.csv");
    synthetic_houses(&data, 300, 11, true);
    let out = dir.join("run");
    let run = |variant: &str| {
        let o = zoo(&[
            "train",
            "--variant",
            variant,
            "--data",
            data.to_str().unwrap(),
            "--target",
            "Price",
            "--folds",
            "3",
            "--epochs",
            "40",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let report = run("dense-mlp");
    let folds = report["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 3);
    let scores: Vec<f64> = folds
        .iter()
        .map(|f| f["valid_log_rmse"].as_f64().unwrap())
        .collect();
    let mean = scores.iter().sum::<f64>() / 3.0;
    let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    assert!((report["log_rmse_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!((report["log_rmse_std"].as_f64().unwrap() - sd).abs() < 1e-12);
    assert_eq!(report["inputs"], 2 + 5, "two numbers, four zones and missing");
    // The log price spreads by about 0.37; predicting its mean would score that. The noise
    // floor is 0.05.
    assert!(mean < 0.2, "dense-mlp 3-fold log-RMSE {mean}");
    assert!(out.join("cross_validation.json").is_file());

    let new = dir.join("new.csv");
    synthetic_houses(&new, 20, 99, false);
    let model = out.join("model.safetensors");
    let o = zoo(&[
        "infer",
        new.to_str().unwrap(),
        "--weights",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Id,Price"));
    let predictions: Vec<(String, f64)> = lines
        .map(|l| {
            let (id, price) = l.split_once(',').unwrap();
            (id.to_string(), price.parse().unwrap())
        })
        .collect();
    assert_eq!(predictions.len(), 20);
    assert_eq!(predictions[0].0, "1000");
    // The same houses with their prices: the predictions are scored in a note, and close.
    let labelled = dir.join("labelled.csv");
    synthetic_houses(&labelled, 20, 99, true);
    let o = zoo(&[
        "infer",
        labelled.to_str().unwrap(),
        "--weights",
        model.to_str().unwrap(),
    ]);
    let note = stderr(&o);
    let score: f64 = note
        .split("log-RMSE of these predictions ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("{note}"))
        .parse()
        .unwrap();
    assert!(score < 0.2, "{note}");
    let truth: Vec<f64> = std::fs::read_to_string(&labelled)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<f64>().unwrap().ln())
        .collect();
    let rmse = (predictions
        .iter()
        .zip(&truth)
        .map(|((_, p), t)| (p.ln() - t).powi(2))
        .sum::<f64>()
        / 20.0)
        .sqrt();
    assert!(
        (rmse - score).abs() < 1e-3,
        "printed {score}, from the CSV {rmse}"
    );

    // Linear regression on the same folds (the seed's).
    let linear = run("linear-regression");
    assert_eq!(linear["parameters"], 8);
    let linear_folds: Vec<u64> = linear["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["valid_rows"].as_u64().unwrap())
        .collect();
    let dense_folds: Vec<u64> = folds.iter().map(|f| f["valid_rows"].as_u64().unwrap()).collect();
    assert_eq!(linear_folds, dense_folds);
}

/// `train --variant dense-mlp --data DATA --target Price EXTRA... --epochs 1 --out OUT`.
fn train_one_epoch(data: &Path, extra: &[&str], out: &Path) -> std::process::Output {
    let mut args = vec![
        "train",
        "--variant",
        "dense-mlp",
        "--data",
        data.to_str().unwrap(),
        "--target",
        "Price",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--epochs", "1", "--out", out.to_str().unwrap()]);
    zoo(&args)
}

#[test]
fn bad_csv_files_name_the_file_the_line_and_the_column() {
    let dir = temp("tabular", "bad");
    for (name, text, flags, says) in [
        (
            "no_target.csv",
            "Area,Cost\n1,2\n3,4\n",
            &[][..],
            vec![
                "no_target.csv",
                "line 1",
                "column `Price`",
                "no target column",
                "Area, Cost",
            ],
        ),
        (
            "word.csv",
            "Area,Price\n1,10\n2,20\nbig,30\n4,40\n",
            &[][..],
            vec![
                "word.csv, line 4, column `Area`",
                "`big` is not a number",
                "--categorical Area",
            ],
        ),
        (
            "ragged.csv",
            "Area,Zone,Price\n1,a,10\n2,b\n3,c,30\n",
            &[][..],
            vec!["ragged.csv, line 3", "2 fields where the header has 3"],
        ),
        (
            "bad_price.csv",
            "Area,Price\n1,10\n2,-5\n3,30\n4,40\n",
            &[][..],
            vec!["bad_price.csv, line 3, column `Price`", "positive"],
        ),
        (
            "flag.csv",
            "Area,Price\n1,10\n2,20\n3,30\n4,40\n",
            &["--image-size", "32"][..],
            vec!["--image-size is for image variants"],
        ),
    ] {
        let (path, run) = (dir.join(name), dir.join("run"));
        std::fs::write(&path, text).unwrap();
        let o = train_one_epoch(&path, flags, &run);
        assert!(!o.status.success(), "{name} was accepted");
        let e = stderr(&o);
        for s in says {
            assert!(e.contains(s), "{name}: `{s}` not in {e}");
        }
        assert!(
            !dir.join("run/model.safetensors").exists(),
            "{name} wrote a model"
        );
    }
    // A CSV given to an image variant, and an image model's weights given a CSV.
    let csv = dir.join("flag.csv");
    let o = zoo(&["train", "--data", csv.to_str().unwrap(), "--epochs", "1"]);
    assert!(
        stderr(&o).contains("is a CSV file, and d2l an image variant"),
        "{}",
        stderr(&o)
    );
    let o = zoo(&[
        "infer",
        csv.to_str().unwrap(),
        "--weights",
        "weights/d2l-fashion-mnist.safetensors",
    ]);
    assert!(stderr(&o).contains("not a tabular model"), "{}", stderr(&o));
}

/// The real data: Debian's r-cran-modeldata through the committed script (CI installs it).
#[test]
fn the_ames_houses_from_debian_read_as_the_book_describes() {
    if std::process::Command::new("Rscript")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install r-cran-modeldata (see .ci/run)"
        );
        eprintln!("skipped: no Rscript (apt-get install --no-install-recommends r-cran-modeldata)");
        return;
    }
    let dir = temp("tabular", "ames");
    let csv = dir.join("ames.csv");
    let o = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ames-to-csv.sh"))
        .arg(&csv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let table = CsvTable::read(&csv).unwrap();
    assert_eq!((table.len(), table.columns.len()), (2930, 74));
    let options = ColumnOptions {
        target: "Sale_Price".into(),
        ..Default::default()
    };
    let (schema, notes) = Schema::infer(&table, &options).unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let numeric = schema
        .features
        .iter()
        .filter(|(_, k)| *k == densenet_zoo::tabular::ColumnKind::Numeric)
        .count();
    assert_eq!((numeric, schema.features.len() - numeric), (33, 40));
    let p = schema.fit(&table).unwrap();
    let logs = p.log_targets(&table).unwrap();
    // De Cock's prices: $12,789 to $755,000.
    let (lo, hi) = logs
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    assert_eq!((lo.exp().round(), hi.exp().round()), (12789.0, 755000.0));
}

#[test]
fn infer_reads_gzip_keys_rows_and_writes_nothing_when_a_file_is_bad() {
    let dir = temp("tabular", "infer");
    let out = dir.join("run");
    let houses = small_houses();
    let o = zoo(&[
        "train",
        "--variant",
        "linear",
        "--data",
        houses.to_str().unwrap(),
        "--target",
        "Sale_Price",
        "--epochs",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = out.join("model.safetensors");
    let text = std::fs::read_to_string(&houses).unwrap();
    // Gzipped, and without the identifier column: keyed by line, with a note.
    let gz = dir.join("houses.csv.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    let no_id: String = text
        .lines()
        .map(|l| l.split_once(',').unwrap().1.to_string() + "\n")
        .collect();
    std::io::Write::write_all(&mut encoder, no_id.as_bytes()).unwrap();
    encoder.finish().unwrap();
    let o = zoo(&[
        "infer",
        gz.to_str().unwrap(),
        "--weights",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(stdout.starts_with("line,Sale_Price\n2,"), "{stdout}");
    assert_eq!(stdout.lines().count(), 13);
    assert!(
        stderr(&o).contains("lack the model's identifier `Id`"),
        "{}",
        stderr(&o)
    );
    // A good file then a bad one: an error, and nothing on stdout.
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, text.replace("2003", "new")).unwrap();
    let o = zoo(&[
        "infer",
        houses.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--weights",
        model.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(o.stdout.is_empty(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(
        stderr(&o).contains("bad.csv, line 2, column `Year_Built`: `new` is not a number"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn misnamed_variants_and_columns_are_refused_as_such() {
    let houses = small_houses();
    let h = houses.to_str().unwrap();
    let o = zoo(&[
        "train",
        "--variant",
        "dense-mpl",
        "--data",
        h,
        "--target",
        "Sale_Price",
    ]);
    assert!(
        stderr(&o).contains("unknown variant `dense-mpl`"),
        "{}",
        stderr(&o)
    );
    let o = zoo(&[
        "train",
        "--variant",
        "dense-mlp",
        "--data",
        h,
        "--target",
        "Sale_Price",
        "--id-column",
        "Sale_Price",
    ]);
    assert!(
        stderr(&o).contains("--id-column names the target column"),
        "{}",
        stderr(&o)
    );
    let o = zoo(&["summary", "--variant", "dense-mlp"]);
    assert!(
        stderr(&o).contains("a net for tabular data, not images"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn what_would_train_nothing_or_overflow_is_refused() {
    let dir = temp("tabular", "overflow");
    let run = dir.join("run");
    let train = |path: &Path, extra: &[&str]| train_one_epoch(path, extra, &run);
    let ok = dir.join("ok.csv");
    std::fs::write(&ok, "Area,Zone,Price\n1,a,10\n2,b,20\n3,a,30\n4,b,40\n").unwrap();
    let o = train(&ok, &["--batch-size", "1"]);
    assert!(
        stderr(&o).contains("batch size 1: batch norm has no statistics of one row"),
        "{}",
        stderr(&o)
    );
    let huge = dir.join("huge.csv");
    std::fs::write(&huge, "Area,Zone,Price\n1e160,a,10\n2,b,20\n3,a,30\n4,b,40\n").unwrap();
    let o = train(&huge, &[]);
    assert!(
        stderr(&o).contains("column `Area`: values too large to standardise"),
        "{}",
        stderr(&o)
    );
    let wide = dir.join("wide.csv");
    let rows: String = (0..70_000)
        .map(|i| format!("{i},k{i},{}\n", 10 + i % 7))
        .collect();
    std::fs::write(&wide, format!("Area,Key,Price\n{rows}")).unwrap();
    let o = train(&wide, &[]);
    assert!(
        stderr(&o).contains("column `Key`: the encoded rows would have 70002 inputs"),
        "{}",
        stderr(&o)
    );
    assert!(!run.join("model.safetensors").exists());

    // A trained model given a value far outside its training rows, in a file named .txt.
    let o = train(&ok, &["--batch-size", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let far = dir.join("far.txt");
    std::fs::write(&far, "Area,Zone\n2,a\n1e300,b\n").unwrap();
    let model = run.join("model.safetensors");
    let o = zoo(&[
        "infer",
        far.to_str().unwrap(),
        "--weights",
        model.to_str().unwrap(),
    ]);
    assert!(o.stdout.is_empty());
    assert!(
        stderr(&o).contains("far.txt, line 3, column `Area`: `1e300` is too far outside the training values"),
        "{}",
        stderr(&o)
    );
}
