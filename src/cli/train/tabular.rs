//! `train` of a tabular variant: the flags that only tabular runs take, and those they refuse.

use densenet_zoo::tabular::{ColumnOptions, MlpSpec};
use densenet_zoo::tools::device::parse_device;
use densenet_zoo::Variant;

use super::{override_recipe, Args};

/// The tabular spec `--variant` names, if it names one.
pub fn tabular_spec(args: &Args) -> anyhow::Result<Option<MlpSpec>> {
    let Some(variant) = &args.variant else {
        return Ok(None);
    };
    // A spec file meant for tabular data (--target given) is read as one, so that its own
    // mistakes are the ones reported.
    let spec = match MlpSpec::resolve(variant)? {
        None if args.target.is_some() && std::path::Path::new(variant).is_file() => {
            let text = std::fs::read_to_string(variant)?;
            Some(MlpSpec::from_json(&text, variant)?)
        }
        spec => spec,
    };
    if spec.is_some() && args.resume {
        anyhow::bail!("--resume: tabular runs take seconds and are not resumed; run the command again");
    }
    Ok(spec)
}

/// The tabular run `args` ask for; the image-only flags are refused by name.
pub fn tabular_request(spec: MlpSpec, args: &Args) -> anyhow::Result<crate::cli::tabular::TrainRequest> {
    let image_only = [
        ("--image-size", args.image_size.is_some()),
        ("--augment", args.augment.is_some()),
        ("--label-smoothing", args.label_smoothing.is_some()),
        ("--transition-pool", args.transition_pool.is_some()),
        ("--warmup-epochs", args.warmup_epochs.is_some()),
        ("--workers", args.workers.is_some()),
        ("--skip-bad-images", args.skip_bad_images.is_some()),
        ("--memory-efficient", args.memory_efficient.is_some()),
        ("--sync-bn", args.sync_batch_norm.is_some()),
        ("--num-classes", args.num_classes.is_some()),
        ("--weights", args.weights.is_some()),
        (
            "--use-ema/--weights-key",
            args.state_dict.use_ema || args.state_dict.weights_key.is_some(),
        ),
        ("--freeze", args.freeze.is_some()),
        ("--labels", args.labels.is_some()),
    ];
    let given: Vec<&str> = image_only.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    anyhow::ensure!(
        given.is_empty(),
        "{} {} for image variants, not {} (a tabular variant)",
        given.join(", "),
        if given.len() == 1 { "is" } else { "are" },
        spec.name
    );
    let data = args.data.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{} trains on a CSV file: pass --data FILE.csv --target COLUMN",
            spec.name
        )
    })?;
    let target = args
        .target
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{} needs the column to predict: pass --target COLUMN", spec.name))?;
    let mut recipe = spec.recipe.clone();
    override_recipe(&mut recipe, args);
    Ok(crate::cli::tabular::TrainRequest {
        spec,
        data,
        columns: ColumnOptions {
            target,
            id_column: args.id_column.clone(),
            categorical: args.categorical.clone(),
        },
        folds: args.folds,
        recipe,
        seed: args.seed.unwrap_or(0),
        out: args.out.clone(),
        json: args.json,
        device: parse_device(&args.device)?,
    })
}

/// Refuses the tabular flags, and CSV data, for an image variant.
pub fn refuse_tabular_input(args: &Args) -> anyhow::Result<()> {
    let tabular_only = [
        ("--target", args.target.is_some()),
        ("--folds", args.folds.is_some()),
        ("--categorical", !args.categorical.is_empty()),
        ("--id-column", args.id_column.is_some()),
        ("--json", args.json),
    ];
    let given: Vec<&str> = tabular_only.iter().filter(|(_, g)| *g).map(|(f, _)| *f).collect();
    let variant = args.variant.as_deref().unwrap_or("d2l");
    // A misspelt name or a broken spec file says so before anything else.
    Variant::resolve_image(variant)?;
    anyhow::ensure!(
        given.is_empty(),
        "{} {} for tabular variants (dense-mlp, plain-mlp, linear-regression), not {variant}",
        given.join(", "),
        if given.len() == 1 { "is" } else { "are" },
    );
    if let Some(data) = args.data.as_deref().filter(|d| crate::cli::tabular::is_csv(d)) {
        anyhow::bail!(
            "--data {} is a CSV file, and {variant} an image variant: train a tabular variant on it \
             (--variant dense-mlp --target COLUMN)",
            data.display()
        );
    }
    Ok(())
}
