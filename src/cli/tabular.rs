//! `train --variant dense-mlp --data houses.csv --target Sale_Price [--folds 5]` and
//! `infer houses.csv --weights model.safetensors`: the tabular nets on CSV files.

use std::path::{Path, PathBuf};

use candle_core::Device;
use densenet_zoo::spec::Recipe;
use densenet_zoo::tabular::{
    self, cross_validate, fit, log_rmse, ColumnOptions, CsvTable, Encoded, FitOptions, MlpSpec, Schema,
    TabularModel,
};
use densenet_zoo::DenseMlp;

/// What `train` was asked, for a tabular variant.
pub struct TrainRequest {
    pub spec: MlpSpec,
    pub data: PathBuf,
    pub columns: ColumnOptions,
    pub folds: Option<usize>,
    pub recipe: Recipe,
    pub seed: u64,
    pub out: PathBuf,
    pub json: bool,
    pub device: Device,
}

/// The file a tabular run writes in its output folder.
pub const MODEL_FILE: &str = "model.safetensors";
const CROSS_VALIDATION_FILE: &str = "cross_validation.json";

/// Cross-validates (with `--folds`), then trains on every row and saves the model.
pub fn train(request: TrainRequest) -> anyhow::Result<()> {
    let TrainRequest {
        spec,
        data,
        columns,
        folds,
        recipe,
        seed,
        out,
        json,
        device,
    } = request;
    recipe
        .validate()
        .map_err(|m| anyhow::anyhow!("the training recipe: {m}"))?;
    // Held for the run, before the data is read.
    let _lock = densenet_zoo::train::RunLock::acquire(&out)?;
    if out.join("last.safetensors").exists() {
        anyhow::bail!(
            "--out {} holds an image run (last.safetensors): name another folder for a tabular run",
            out.display()
        );
    }
    let table = CsvTable::read(&data)?;
    let (schema, notes) = Schema::infer(&table, &columns)?;
    for note in notes {
        say!("note: {note}");
    }
    let numeric = schema
        .features
        .iter()
        .filter(|(_, k)| *k == tabular::ColumnKind::Numeric)
        .count();
    let options = FitOptions { recipe, seed };
    let r = &options.recipe;
    say!(
        "training {} on {} ({} rows; {} numeric and {} categorical columns; target log {}): {:?} lr {} \
         (schedule {:?}), batch {}, weight decay {}, {} epochs, seed {seed}, device {device:?}",
        spec.name,
        data.display(),
        table.len(),
        numeric,
        schema.features.len() - numeric,
        schema.target,
        r.optimizer,
        r.lr,
        r.schedule,
        r.batch_size,
        r.weight_decay,
        r.epochs,
    );
    let cv = match folds {
        Some(k) => {
            let cv = cross_validate(&spec, &schema, &table, k, &options, &device, |f| {
                say!(
                    "fold {}/{k}: train log-RMSE {:.4}, valid log-RMSE {:.4} ({} rows held out{})",
                    f.fold,
                    f.train_log_rmse,
                    f.valid_log_rmse,
                    f.valid_rows,
                    if f.unseen_categories > 0 {
                        format!(
                            "; {} category values unseen in training, encoded as zeros",
                            f.unseen_categories
                        )
                    } else {
                        String::new()
                    }
                )
            })?;
            Some(cv)
        }
        None => None,
    };
    let fitted = fit(&spec, &schema, &table, &options, &device)?;
    let encoded = fitted.preprocessor.encode(&table)?;
    let train_log_rmse = log_rmse(
        &fitted.predict_log(&encoded, &device)?,
        &fitted.preprocessor.log_targets(&table)?,
    );
    let parameters = DenseMlp::parameter_count(&spec, fitted.preprocessor.width())?;
    // Predicting the training mean scores the log target's spread: a model worse than that
    // learnt nothing (a learning rate too high, too few epochs).
    let spread = fitted.preprocessor.target_std;
    if train_log_rmse >= 0.95 * spread {
        say!(
            "note: the trained model's log-RMSE on its own training rows, {train_log_rmse:.4}, is no \
             better than predicting their mean ({spread:.4}): lower --lr or train longer"
        );
    }
    let mut report = serde_json::json!({
        "variant": spec.name,
        "data": data.display().to_string(),
        "target": schema.target,
        "rows": table.len(),
        "inputs": fitted.preprocessor.width(),
        "parameters": parameters,
        "seed": seed,
        "epochs": options.recipe.epochs,
        "recipe": serde_json::to_value(&options.recipe)?,
        "train_log_rmse": train_log_rmse,
        "model": out.join(MODEL_FILE).display().to_string(),
    });
    if let Some(cv) = &cv {
        let value = serde_json::to_value(cv)?;
        for key in ["log_rmse_mean", "log_rmse_std", "folds"] {
            report[key] = value[key].clone();
        }
        report["k"] = serde_json::json!(cv.folds.len());
    }
    tabular::save(
        &out.join(MODEL_FILE),
        &spec,
        &fitted.preprocessor,
        &fitted.varmap,
        &report,
    )?;
    if cv.is_some() {
        densenet_zoo::checkpoint::write_atomic(
            &out.join(CROSS_VALIDATION_FILE),
            format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes(),
        )?;
    } else if out.join(CROSS_VALIDATION_FILE).exists() {
        // An earlier run's, which would read as this model's.
        std::fs::remove_file(out.join(CROSS_VALIDATION_FILE))?;
        say!(
            "note: removed {}: an earlier run's (no --folds this time)",
            out.join(CROSS_VALIDATION_FILE).display()
        );
    }
    if json {
        out!("{report}")?;
    } else {
        if let Some(cv) = &cv {
            out!(
                "{}: {}-fold log-RMSE {:.4} ± {:.4} (mean ± sd over folds; {} parameters over {} inputs)",
                spec.name,
                cv.folds.len(),
                cv.log_rmse_mean,
                cv.log_rmse_std,
                parameters,
                fitted.preprocessor.width()
            )?;
        }
        out!(
            "{}: trained on all {} rows, train log-RMSE {:.4}: {}",
            spec.name,
            table.len(),
            train_log_rmse,
            out.join(MODEL_FILE).display()
        )?;
    }
    Ok(())
}

/// True for a path named `*.csv`, `*.tsv`, or either gzipped (any case).
pub fn is_csv(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    name.ends_with(".csv") || name.ends_with(".tsv")
}

/// Predicts the target of every row of `files` with the tabular checkpoint `weights`, written
/// as CSV on stdout: a key column, then the target; with more than one file, the file first.
/// The key is the model's identifier column where every file has it, else a column called
/// `id` (any case) that every file has, else the row's line in its file. With `json`, one
/// object per row. Every file is read and predicted before anything is written: a bad file
/// stops the command with nothing on stdout.
pub fn infer(files: &[PathBuf], weights: &Path, json: bool, device: &Device) -> anyhow::Result<()> {
    let model = TabularModel::load(weights, device)?;
    let p = &model.preprocessor;
    let mut predicted = Vec::with_capacity(files.len());
    for file in files {
        let table = CsvTable::read(file)?;
        let encoded = p.encode(&table)?;
        let logs = tabular::predict_log(&model.model, p, &encoded, device)?;
        if let Some(row) = logs.iter().position(|v| !v.exp().is_finite()) {
            anyhow::bail!(
                "{}, line {}: the predicted {} is not a finite number (its log is {}): the row's \
                 values are far outside the training rows'",
                file.display(),
                table.line(row),
                p.target,
                logs[row]
            );
        }
        predicted.push((file, table, encoded, logs));
    }
    let tables: Vec<&CsvTable> = predicted.iter().map(|(_, t, _, _)| t).collect();
    let key = row_key(p.id_column.as_deref(), &tables);
    for (file, table, encoded, logs) in &predicted {
        let ignored: Vec<String> = encoded
            .ignored
            .iter()
            .filter(|c| Some(c.as_str()) != key.as_deref())
            .cloned()
            .collect();
        announce(file, encoded, &ignored);
        score_if_labelled(file, table, &model, logs);
    }
    let key_name = key.clone().unwrap_or_else(|| "line".into());
    let mut writer = csv::Writer::from_writer(std::io::stdout().lock());
    if !json {
        let mut header = vec![key_name.clone(), p.target.clone()];
        if files.len() > 1 {
            header.insert(0, "file".into());
        }
        writer.write_record(&header)?;
    }
    for (file, table, _, logs) in &predicted {
        let key_index = key.as_ref().and_then(|k| table.column_index(k));
        for (row, log) in logs.iter().enumerate() {
            let value = log.exp();
            if json {
                let key_value = match key_index {
                    Some(c) => serde_json::json!(table.value(row, c)),
                    None => serde_json::json!(table.line(row)),
                };
                out!(
                    "{}",
                    serde_json::json!({
                        "file": file.display().to_string(),
                        key_name.as_str(): key_value,
                        p.target.as_str(): value,
                        "log_prediction": log,
                    })
                )?;
            } else {
                let key_value = match key_index {
                    Some(c) => table.value(row, c).to_string(),
                    None => table.line(row).to_string(),
                };
                let mut record = vec![key_value, format!("{value}")];
                if files.len() > 1 {
                    record.insert(0, file.display().to_string());
                }
                writer.write_record(&record)?;
            }
        }
    }
    writer.flush()?;
    Ok(())
}

/// The column that keys predictions: the model's identifier where every table has it, else
/// one called `id` (any case) that every table has; `None` for the rows' lines. Says which
/// when it is not the model's own.
fn row_key(model_id: Option<&str>, tables: &[&CsvTable]) -> Option<String> {
    if let Some(id) = model_id {
        if tables.iter().all(|t| t.column_index(id).is_some()) {
            return Some(id.to_string());
        }
    }
    let chosen = tables[0]
        .columns
        .iter()
        .find(|c| c.eq_ignore_ascii_case("id"))
        .filter(|first| tables.iter().all(|t| t.column_index(first).is_some()))
        .cloned();
    match (&chosen, model_id) {
        (Some(c), Some(id)) => {
            say!("note: the files lack the model's identifier `{id}`: rows are keyed by `{c}`")
        }
        (Some(c), None) => say!("note: rows are keyed by the files' column `{c}`"),
        (None, Some(id)) => {
            say!("note: the files lack the model's identifier `{id}`: rows are keyed by their line")
        }
        (None, None) => {}
    }
    chosen
}

/// Notes what the encoding decided: unseen categories and unused columns.
fn announce(file: &Path, encoded: &Encoded, ignored: &[String]) {
    for (column, count, first) in &encoded.unseen {
        say!(
            "note: {}: column `{column}` has {count} rows with values the training rows did not have (the \
             first: `{first}`), encoded as no category (all zeros)",
            file.display()
        );
    }
    if !ignored.is_empty() {
        say!(
            "note: {}: not features of this model, ignored: {}",
            file.display(),
            ignored.join(", ")
        );
    }
}

/// Where the file has the target's true values, says how far off the predictions are.
fn score_if_labelled(file: &Path, table: &CsvTable, model: &TabularModel, logs: &[f64]) {
    let p = &model.preprocessor;
    if table.column_index(&p.target).is_none() {
        return;
    }
    match p.log_targets(table) {
        Ok(truth) => say!(
            "note: {} has {}: log-RMSE of these predictions {:.4} over {} rows",
            file.display(),
            p.target,
            log_rmse(logs, &truth),
            truth.len()
        ),
        Err(e) => say!("note: not scored against the file's {}: {e}", p.target),
    }
}
